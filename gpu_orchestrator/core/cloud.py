"""Cloud fallback: where an app's jobs run in the cloud, how our params become the provider's
inputs and its output our result, and when a job goes there. Pure: no I/O.

Config (per app): `cloud:` on a cloud-only app (`kind: replicate | modal`), or `fallback:` on a
local app, which adds `when` (never | unplaceable | busy), `max_local_wait_s` and
`max_cost_per_job`. Known provider models (PRESETS) bring their input mapping, output shape and
pricing; anything the config sets wins.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpu_orchestrator.core.costs import Pricing

Provider = Literal["replicate", "modal"]
OutputShape = Literal["images", "transcription", "chat", "native"]


class InputRule(BaseModel):
    """One of our params as a provider input: its name there, and values translated (our task
    "translate" is Whisper-on-Replicate's translate=true)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    values: dict[str, Any] | None = None


class CloudTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Provider
    # Replicate: exactly one of model ("owner/name", the official model's latest), version (an id)
    # or deployment ("owner/name").
    model: str | None = None
    version: str | None = None
    deployment: str | None = None
    # Modal, SDK mode: a deployed class and method (deploy/modal/modal_app.py), or a function.
    app: str | None = None
    cls: str | None = None
    method: str | None = None
    function: str | None = None
    # Modal, endpoint mode: a web endpoint URL (requires_proxy_auth: Modal-Key/Modal-Secret headers).
    endpoint: str | None = None
    # Our param -> the provider's input (a name, a rule, or null: the provider does not take it).
    # Unset: the preset's; for Modal, our own params as they are (it runs our model code).
    inputs: dict[str, str | InputRule | None] | None = None
    # How to read the provider's output into our result shape. Unset: the preset's, else by task.
    output: OutputShape | None = None
    pricing: Pricing | None = None
    gpu: str | None = Field(default=None, description="Modal: the GPU type the function runs on (for its cost)")
    max_in_flight: int = Field(default=8, ge=1)
    poll_interval_s: float = Field(default=1.0, gt=0)
    # Each provider call (create, get, cancel) gives up after this long: Modal's client retries
    # for ever while its server is unreachable.
    call_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _where(self) -> "CloudTarget":
        if self.backend == "replicate":
            n = sum(bool(x) for x in (self.model, self.version, self.deployment))
            if n != 1:
                raise ValueError("replicate: set exactly one of model, version, deployment")
        elif not (self.endpoint or (self.app and (self.function or (self.cls and self.method)))):
            raise ValueError("modal: set endpoint, or app with cls and method, or app with function")
        return self

    @property
    def ref(self) -> str:
        """What it names, for logs and job rows (never a secret)."""
        if self.backend == "replicate":
            return self.model or self.deployment or f"version {self.version}"
        if self.endpoint:
            return self.endpoint.split("?")[0]
        return f"{self.app}/{self.function or f'{self.cls}.{self.method}'}"


class Fallback(CloudTarget):
    when: Literal["never", "unplaceable", "busy"] = "unplaceable"
    # busy: new jobs go to the cloud while the estimated local wait is longer than this.
    max_local_wait_s: float | None = Field(default=None, gt=0)
    max_cost_per_job: float | None = Field(default=None, ge=0)
    # The expected local run time until measured (the wait estimate and the cost estimate use it).
    service_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _busy(self) -> "Fallback":
        if self.when == "busy" and self.max_local_wait_s is None:
            raise ValueError("when: busy needs max_local_wait_s")
        return self


_IMAGE_INPUTS: dict[str, Any] = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "width": "width", "height": "height",
    "num_inference_steps": "num_inference_steps", "guidance_scale": "guidance_scale", "seed": "seed",
    "num_images": "num_outputs",
}
# Documented defaults (docs/cloud.md); the versions are the public ones as of 2026-11.
PRESETS: dict[str, dict[str, Any]] = {
    "stability-ai/sdxl": {
        "inputs": _IMAGE_INPUTS, "output": "images",
        "pricing": {"mode": "per_second", "hardware": "gpu-l40s"},
    },
    "prunaai/z-image-turbo": {
        "inputs": {**_IMAGE_INPUTS, "negative_prompt": None, "num_images": None}, "output": "images",
        "pricing": {"mode": "per_image", "per_image": 0.005},
    },
    "openai/whisper": {
        "inputs": {"audio": "audio", "language": "language",
                   "task": {"name": "translate", "values": {"transcribe": False, "translate": True}}},
        "output": "transcription", "pricing": {"mode": "per_second", "hardware": "gpu-t4"},
    },
    "meta/meta-llama-3-8b-instruct": {
        # messages become system_prompt + a Llama-3 prompt (see chat_inputs).
        "inputs": {"messages": "prompt", "max_tokens": "max_tokens", "min_tokens": "min_tokens",
                   "temperature": "temperature", "seed": "seed"},
        "output": "chat",
        "pricing": {"mode": "per_token", "per_input_token": 0.05e-6, "per_output_token": 0.25e-6},
    },
}
# Replicate model versions of the presets (for `version:` configs that name a model too).
PRESET_VERSIONS = {
    "stability-ai/sdxl": "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc",
    "openai/whisper": "8099696689d249cf8b122d833c36ac3f75505c666a395ca40ef26f68e7d3d16e",
}
_TASK_OUTPUT: dict[str, OutputShape] = {"image": "images", "transcription": "transcription", "chat": "chat"}


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A target with its defaults filled in."""

    target: CloudTarget
    inputs: dict[str, InputRule | None] | None  # None: our params as they are
    output: OutputShape
    pricing: Pricing


def resolve(target: CloudTarget, task: str) -> Resolved:
    preset = PRESETS.get(target.model or target.deployment or "", {})
    if not preset and target.version:
        preset = next((PRESETS[m] for m, v in PRESET_VERSIONS.items() if v == target.version), {})
    raw = target.inputs if target.inputs is not None else preset.get("inputs")
    inputs = None if raw is None else {k: (InputRule(name=v) if isinstance(v, str) else
                                           InputRule.model_validate(v) if isinstance(v, dict) else v)
                                       for k, v in raw.items()}
    output = target.output or preset.get("output") or (
        "native" if target.backend == "modal" else _TASK_OUTPUT.get(task, "native"))
    pricing = target.pricing or Pricing.model_validate(preset.get("pricing") or {"mode": "per_second"})
    return Resolved(target, inputs, output, pricing)


class NotTaken(ValueError):
    """Our params the provider does not take; `fields` name them (params.x)."""

    def __init__(self, fields: list[str], ref: str):
        super().__init__(f"not taken by {ref}: {', '.join(fields)}")
        self.fields = fields


def check_inputs(r: Resolved, params: dict[str, Any], defaults: dict[str, Any]) -> None:
    """NotTaken when a param set to anything but its default has no provider input."""
    if r.inputs is None:
        return
    bad = [f"params.{k}" for k, v in params.items()
           if (k not in r.inputs or r.inputs[k] is None) and v is not None and v != defaults.get(k)]
    if bad:
        raise NotTaken(bad, f"{r.target.backend} {r.target.ref}")


def to_inputs(r: Resolved, params: dict[str, Any]) -> dict[str, Any]:
    """The provider's input for our (validated) params. File params stay artifact URIs here; the
    backend turns them into what the provider reads."""
    if r.inputs is None:
        return dict(params)
    out: dict[str, Any] = {}
    for k, v in params.items():
        rule = r.inputs.get(k)
        if rule is None or v is None:
            continue
        if k == "messages" and r.output == "chat":
            out.update(chat_inputs(v))
            continue
        out[rule.name] = rule.values.get(v, v) if rule.values and isinstance(v, str) else v
    return out


def chat_inputs(messages: list[dict[str, str]]) -> dict[str, Any]:
    """Chat messages as Replicate's Llama-3 models take them: the system message apart, the rest in
    the model's own chat template, passed through untouched (prompt_template "{prompt}")."""
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
                    for m in messages if m["role"] != "system")
    prompt = f"<|begin_of_text|>{turns}<|start_header_id|>assistant<|end_header_id|>\n\n"
    return {"prompt": prompt, "system_prompt": system, "prompt_template": "{prompt}"}


def output_files(r: Resolved, output: Any) -> list[str]:
    """URLs of files in a provider's output to fetch into our artifact store (images)."""
    if r.output != "images":
        return []
    items = output if isinstance(output, list) else [output]
    return [u for u in items if isinstance(u, str) and u.startswith(("http://", "https://", "data:"))]


def to_result(r: Resolved, output: Any, metrics: dict[str, Any], files: list[dict[str, Any]]) -> Any:
    """The provider's output in our result shape (what the local model returns). `files`: the
    artifacts stored from output_files, in order ({"artifact", "url", "width", "height"})."""
    if r.output == "images":
        return {"images": files, "model": r.target.ref}
    if r.output == "transcription":
        out = output if isinstance(output, dict) else {"transcription": str(output)}
        segments = [{"id": s.get("id", i), "start": s.get("start"), "end": s.get("end"), "text": s.get("text", "")}
                    for i, s in enumerate(out.get("segments") or [])]
        return {"text": out.get("transcription") or out.get("text") or "", "segments": segments,
                "language": out.get("detected_language") or out.get("language"), "model": r.target.ref}
    if r.output == "chat":
        text = "".join(output) if isinstance(output, list) else str(output or "")
        return {"text": text, "finish_reason": "stop", "prompt_tokens": metrics.get("input_token_count"),
                "completion_tokens": metrics.get("output_token_count"), "model": r.target.ref}
    return output


# -- when a job goes to the cloud --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LocalOutlook:
    """What the router knows of the local side of an app when a job arrives."""

    unplaceable: str | None = None  # why no GPU can ever hold its model
    failing: str | None = None  # its model fails to load
    wait_s: float = 0.0  # estimated wait before a new job starts locally


@dataclasses.dataclass(frozen=True)
class Route:
    backend: str | None  # None: local
    reason: str


LOCAL = Route(None, "")


def local_wait_s(*, queued: int, running: int, slots: int, service_s: float, load_s: float, resident: bool) -> float:
    """A new job's wait: a load if the model is not resident, then the waves of work ahead of it
    (everything queued and running, `slots` at a time) at `service_s` each."""
    ahead = queued + running
    waves = math.ceil(max(0, ahead - slots + 1) / max(1, slots))
    return (0.0 if resident else load_s) + waves * service_s


def choose(fallback: Fallback | None, outlook: LocalOutlook, *, available: bool,
           cost_estimate: float | None = None) -> Route:
    """Local or the fallback for a new job of a local app. `available`: the backend has its token."""
    if fallback is None or fallback.when == "never":
        return LOCAL
    if fallback.max_cost_per_job is not None and cost_estimate is not None and cost_estimate > fallback.max_cost_per_job:
        return LOCAL  # too dear: the job waits for local capacity (or fails as unplaceable)
    why = None
    if outlook.unplaceable:
        why = f"no local GPU can hold the model ({outlook.unplaceable})"
    elif outlook.failing:
        why = f"the local model fails to load ({outlook.failing})"
    elif fallback.when == "busy" and fallback.max_local_wait_s is not None and outlook.wait_s > fallback.max_local_wait_s:
        why = f"estimated local wait {outlook.wait_s:.0f} s > max_local_wait_s {fallback.max_local_wait_s:g} s"
    if why is None or not available:
        return LOCAL
    return Route(fallback.backend, why)
