"""new-app's inputs and their checks: the tasks it scaffolds (TASKS: per task its app task, default
model, packages and parameters), NAME (check_name, class_name), the --runtime-env pins
(parse_packages, merged_packages), and the errors that refuse them (Refused, ScaffoldError)."""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from typing import Any

MAX_NAME = 40
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Names taken by the stack itself: the router's Serve deployment and its application.
RESERVED = {"router", "orchestrator"}
# What the generated module and test import or define: the class must not be one of them.
_MODULE_NAMES = {"ModelDeployment", "JobContext", "JobCancelled", "ArtifactStore", "Transformers", "Any", "Callable",
                 "Iterator", "Path", "SimpleNamespace", "Recorder"}
_PKG_RE = re.compile(r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)(?P<extras>\[[A-Za-z0-9._,-]+\])?"
                     r"==(?P<version>[A-Za-z0-9][A-Za-z0-9.+!_-]*(?:\.\*)?)$")
_PKG_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
TRANSFORMERS = ("transformers>=4.51,<6", "tokenizers>=0.20", "safetensors>=0.4", "accelerate>=1.0")
# Image, text and chat models list the same packages as runtime_envs/sdxl.yaml, zimage.yaml and
# llm.yaml: Ray keys its pip virtualenvs by the list, so they all share one (a clone of the base
# install each costs a GB of disk and a minute of a small box; diffusers is a few MB of Python).
HF = ("diffusers>=0.36,<1", *TRANSFORMERS)


class ScaffoldError(ValueError):
    """The scaffold cannot be made as asked (the config would not validate, no place to insert)."""


class Refused(ScaffoldError):
    """Bad input: a NAME that is not an identifier or clashes, a malformed --runtime-env, no project."""


@dataclass(frozen=True)
class TaskSpec:
    app_task: str  # AppSpec.task
    what: str
    model_id: str  # the real profile's default model
    loader: str
    vram_gb: float
    load_s: float
    timeout_s: int
    max_in_flight: int
    packages: tuple[str, ...]
    parameters: tuple[dict[str, Any], ...]
    example: str


_SEED = {"name": "seed", "type": "integer", "minimum": 0, "maximum": 4294967295,
         "description": "random if unset; reported in the result"}
_LM_PARAMS = (
    {"name": "max_tokens", "type": "integer", "minimum": 1, "maximum": 4096, "default": 128},
    {"name": "min_tokens", "type": "integer", "minimum": 0, "maximum": 4096, "default": 0,
     "description": "generate at least this many tokens (end-of-sequence ignored before); capped at max_tokens"},
    {"name": "temperature", "type": "number", "minimum": 0, "maximum": 2, "default": 0.7},
    {"name": "seed", "type": "integer"},
)

TASKS: dict[str, TaskSpec] = {
    "image": TaskSpec(
        app_task="image", what="Text to image", model_id="stabilityai/sd-turbo",
        loader="diffusers AutoPipelineForText2Image", vram_gb=6, load_s=15, timeout_s=600, max_in_flight=2,
        # The same list as runtime_envs/sdxl.yaml: Ray keys pip virtualenvs by it, so they share one.
        packages=HF,
        parameters=(
            {"name": "prompt", "type": "string", "required": True, "max_length": 2000},
            {"name": "negative_prompt", "type": "string", "max_length": 2000},
            {"name": "width", "type": "integer", "minimum": 64, "maximum": 2048, "multiple_of": 8, "default": 512},
            {"name": "height", "type": "integer", "minimum": 64, "maximum": 2048, "multiple_of": 8, "default": 512},
            {"name": "num_inference_steps", "type": "integer", "minimum": 1, "maximum": 150, "default": 4},
            {"name": "guidance_scale", "type": "number", "minimum": 0, "maximum": 30, "default": 0.0},
            _SEED,
            {"name": "num_images", "type": "integer", "minimum": 1, "maximum": 4, "default": 1},
        ),
        example='gpu-orch submit {name} -p prompt="a red fox" -p width=256 -p height=256 --wait --out out/'),
    "audio": TaskSpec(
        app_task="transcription", what="Speech to text", model_id="openai/whisper-small",
        loader="transformers automatic-speech-recognition pipeline", vram_gb=3, load_s=10, timeout_s=1800,
        max_in_flight=2, packages=(*TRANSFORMERS, "imageio-ffmpeg>=0.5"),
        parameters=(
            {"name": "audio", "type": "file", "required": True, "accept": [".wav", ".mp3", ".flac", ".ogg", ".m4a", ".webm"]},
            {"name": "language", "type": "string", "max_length": 16, "description": "e.g. en; the model's default if unset"},
            {"name": "task", "type": "enum", "choices": ["transcribe", "translate"], "default": "transcribe"},
        ),
        example="gpu-orch submit {name} -f audio=clip.wav --wait"),
    "text": TaskSpec(
        app_task="generic", what="Text generation", model_id="Qwen/Qwen2.5-0.5B",
        loader="transformers AutoModelForCausalLM", vram_gb=3, load_s=10, timeout_s=600, max_in_flight=4,
        packages=HF,
        parameters=({"name": "prompt", "type": "string", "required": True, "max_length": 20000}, *_LM_PARAMS),
        example='gpu-orch submit {name} -p prompt="Once upon a time" -p max_tokens=32 --wait'),
    "chat": TaskSpec(
        app_task="chat", what="Chat", model_id="Qwen/Qwen2.5-0.5B-Instruct",
        loader="transformers AutoModelForCausalLM with its chat template", vram_gb=3, load_s=10, timeout_s=600,
        max_in_flight=4, packages=HF,
        parameters=({"name": "messages", "type": "messages", "required": True, "max_length": 100000}, *_LM_PARAMS),
        example="gpu-orch submit {name} -p messages='[{{\"role\":\"user\",\"content\":\"hi\"}}]' --wait"),
}


def class_name(name: str) -> str:
    cls = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)
    return cls + "App" if cls in _MODULE_NAMES else cls


def check_name(name: str) -> None:
    """NAME: a lowercase Python identifier (it is a module, a Serve deployment and an app id)."""
    if not _NAME_RE.match(name):
        raise Refused(f"NAME {name!r} is not a valid app name: use lowercase letters, digits and '_', "
                      "starting with a letter (it names a Python module, a model and an app id)")
    if len(name) > MAX_NAME:
        raise Refused(f"NAME {name!r} is too long: at most {MAX_NAME} characters")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name == "type":
        raise Refused(f"NAME {name!r} is a Python keyword: pick another name")
    if name in RESERVED:
        raise Refused(f"NAME {name!r} is reserved by the stack (its router deployment and application): pick another name")


def parse_packages(specs: tuple[str, ...] | list[str]) -> list[str]:
    """--runtime-env values: each PKG==VER (extras allowed: PKG[extra]==VER), each package once."""
    out, seen = [], {}
    for spec in specs:
        m = _PKG_RE.match(spec.strip())
        if not m:
            raise Refused(f"--runtime-env {spec!r} is not PKG==VER (e.g. transformers==4.57.1)")
        key = _normalise(m["name"])
        if key in seen:
            raise Refused(f"--runtime-env: package {m['name']!r} given twice ({seen[key]!r} and {spec!r})")
        seen[key] = spec
        out.append(spec.strip())
    return out


def _normalise(package: str) -> str:
    return re.sub(r"[-_.]+", "-", package).lower()


def package_key(requirement: str) -> str:
    """A requirement's package name, normalised: a pin and a default of the same package match."""
    return _normalise(_PKG_NAME_RE.match(requirement).group())


def merged_packages(task: str, pinned: list[str]) -> list[str]:
    """The task's default packages, each replaced by a --runtime-env pin of the same package, then
    the other pins."""
    pins = {package_key(p): p for p in pinned}
    out = []
    for default in TASKS[task].packages:
        out.append(pins.pop(package_key(default), default))
    return out + list(pins.values())
