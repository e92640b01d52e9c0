"""OpenAI wire formats <-> our jobs (chat, completions, images, transcriptions) and the model ids. Pure."""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from gpu_orchestrator.core.apps import AppSpec
from gpu_orchestrator.core.transcripts import to_srt, to_text, to_vtt

# Fields of the OpenAI request we map onto the chat app's parameters; others are accepted and ignored.
MAPPED = ("messages", "max_tokens", "temperature", "seed", "min_tokens")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: Any
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    # Not OpenAI's, but vLLM's OpenAI server takes it too (extra_body={"min_tokens": n}).
    min_tokens: int | None = None

    def job_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": self.messages}
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if max_tokens is not None:
            out["max_tokens"] = max_tokens
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.seed is not None:
            out["seed"] = self.seed
        if self.min_tokens is not None:
            out["min_tokens"] = self.min_tokens
        return out


def completion(job_id: str, model: str, result: dict[str, Any], created: int | None = None) -> dict[str, Any]:
    n, prompt = int(result.get("completion_tokens", 0)), int(result.get("prompt_tokens", 0))
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.get("text", "")},
                     "finish_reason": result.get("finish_reason", "stop")}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n},
    }


def chunk(job_id: str, model: str, created: int, delta: dict[str, Any], finish_reason: str | None = None) -> str:
    body = {"id": f"chatcmpl-{job_id}", "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    return f"data: {json.dumps(body)}\n\n"


# The openai SDK's default timeout is 600 s and it retries (twice by default) on a timeout or a 5xx,
# each retry a new request; it does not send an Idempotency-Key. A non-stream wait ends before the
# client's own timeout with a retryable "still running" answer, and its retry (same body, same
# client, `x-stainless-retry-count` >= 1) is matched back to the first request's job.
WAIT_CAP_S = 590.0
READ_TIMEOUT_MARGIN_S = 5.0


def wait_bound_s(job_timeout_s: float, read_timeout: str | None, cap_s: float = WAIT_CAP_S) -> float:
    """How long a non-stream request waits for its job: the job's timeout (+30 s for queueing) but
    under the SDK default timeout, and under the client's own read timeout when it says so
    (`x-stainless-read-timeout`) and leaves room for an answer (> 2 x the margin)."""
    bound = min(job_timeout_s + 30.0, cap_s)
    try:
        rt = float(read_timeout) if read_timeout else None
    except ValueError:
        rt = None
    if rt is not None and rt == rt and rt > 2 * READ_TIMEOUT_MARGIN_S:
        bound = min(bound, rt - READ_TIMEOUT_MARGIN_S)
    return bound


def is_sdk_retry(retry_count: str | None) -> bool:
    return bool(retry_count) and retry_count.strip() not in ("", "0")


def fingerprint(app_id: str, params: dict[str, Any], auth: str | None, client: str | None) -> str:
    """Identifies "the same request from the same client" across SDK retries."""
    import hashlib

    blob = json.dumps({"app": app_id, "params": params, "auth": auth, "client": client}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


# -- model ids ------------------------------------------------------------------------------------

# The app tasks the OpenAI routes serve, and the route that serves each.
ROUTE_TASKS = {"chat": "/v1/chat/completions, /v1/completions", "image": "/v1/images/generations",
               "transcription": "/v1/audio/transcriptions"}


def model_index(apps: Iterable[AppSpec], own_names: Mapping[str, str | None]) -> dict[str, AppSpec]:
    """The model ids the OpenAI routes take, each to its app: the app's id, its `aliases`, and the
    name of the model its deployment loads (`own_names`: deployment -> models.<name>.init.model)
    unless two apps share it. Only apps of a task the routes serve."""
    out: dict[str, AppSpec] = {}
    served = [a for a in apps if a.task in ROUTE_TASKS]
    for a in served:
        out[a.id] = a
    for a in served:
        for alias in a.aliases:
            out.setdefault(alias, a)
    owners: dict[str, list[AppSpec]] = {}
    for a in served:
        name = own_names.get(a.deployment)
        if isinstance(name, str) and name:
            owners.setdefault(name, []).append(a)
    for name, those in owners.items():
        if len(those) == 1:
            out.setdefault(name, those[0])
    return out


def model_entry(model_id: str, app: AppSpec) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "gpu-orchestrator", "app_id": app.id,
            "task": app.task}


# -- completions (a chat app's answer to the prompt as one user turn) ------------------------------


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    prompt: str | list[str]
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    min_tokens: int | None = None

    def job_params(self) -> dict[str, Any]:
        prompt = self.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ValueError("one prompt per request (a list of one string, or a string)")
            prompt = prompt[0]
        return ChatRequest(model=self.model, messages=[{"role": "user", "content": prompt}], max_tokens=self.max_tokens,
                           temperature=self.temperature, seed=self.seed, min_tokens=self.min_tokens).job_params()


def text_completion(job_id: str, model: str, result: dict[str, Any], created: int) -> dict[str, Any]:
    n, prompt = int(result.get("completion_tokens", 0)), int(result.get("prompt_tokens", 0))
    return {"id": f"cmpl-{job_id}", "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": result.get("text", ""), "logprobs": None,
                         "finish_reason": result.get("finish_reason", "stop")}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}}


def text_chunk(job_id: str, model: str, created: int, text: str, finish_reason: str | None = None) -> str:
    body = {"id": f"cmpl-{job_id}", "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
    return f"data: {json.dumps(body)}\n\n"


# -- images ---------------------------------------------------------------------------------------


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # quality, style, user: accepted, not used

    model: str = Field(min_length=1)
    prompt: str
    n: int | None = None
    size: str | None = None
    response_format: Literal["url", "b64_json"] = "url"
    # Not OpenAI's: the image app's own parameters, through the SDK's extra_body.
    negative_prompt: str | None = None
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None

    def job_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": self.prompt}
        if self.n is not None:
            out["num_images"] = self.n
        if self.size is not None and self.size != "auto":
            w, h = parse_size(self.size)
            out["width"], out["height"] = w, h
        for k in ("negative_prompt", "seed", "num_inference_steps", "guidance_scale"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out


# The job API's parameter names as the OpenAI request names them (errors name the request's field).
IMAGE_FIELDS = {"num_images": "n", "width": "size", "height": "size"}


def parse_size(size: str) -> tuple[int, int]:
    w, sep, h = size.lower().partition("x")
    if not sep or not (w.isascii() and w.isdigit() and h.isascii() and h.isdigit()):
        raise ValueError(f"must be WIDTHxHEIGHT in pixels, e.g. 1024x1024 (got {size[:32]!r})")
    return int(w), int(h)


# -- transcriptions -------------------------------------------------------------------------------

TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


def transcript(result: dict[str, Any], fmt: str, task: str = "transcribe") -> tuple[str, Any]:
    """(media type, body) of a transcription job's result in the OpenAI response format `fmt`."""
    segments = result.get("segments") or []
    if fmt == "text":
        return "text/plain", to_text(result)
    if fmt == "srt":
        return "application/x-subrip", to_srt(segments)
    if fmt == "vtt":
        return "text/vtt", to_vtt(segments)
    if fmt == "verbose_json":
        return "application/json", {"task": task, "language": result.get("language"), "duration": result.get("audio_s"),
                                    "text": result.get("text") or "", "segments": segments}
    return "application/json", {"text": result.get("text") or ""}
