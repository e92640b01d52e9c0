"""The app registry: what apps exist, which model deployment serves each, and their parameter schemas.

Pure: pydantic models and validation only, no I/O. Errors name the offending field.
"""

from __future__ import annotations

import math
import re
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpu_orchestrator.core.cloud import CloudTarget, Fallback

ParamType = Literal["string", "integer", "number", "boolean", "enum", "file", "messages"]
CHAT_ROLES = ("system", "user", "assistant")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# Postgres text/jsonb cannot hold U+0000 or a lone UTF-16 surrogate (JSON "\ud800"): refused here,
# naming the field, instead of failing in the INSERT with a 500.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Integers travel through jsonb to models that use 64-bit ints (seeds, sizes).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


class AppKind(str, Enum):
    """Where an app's jobs run: local model deployments, or only in the cloud (the app's `cloud:`
    target names the provider's model; core.cloud)."""

    local = "local"
    modal = "modal"
    replicate = "replicate"


class ParamSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    type: ParamType = "string"
    description: str = ""
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    multiple_of: int | None = None
    choices: list[Any] | None = None
    max_length: int | None = None
    # file: accepted extensions (e.g. [".wav", ".mp3"]); the value is an artifact:// URI.
    accept: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> "ParamSpec":
        if self.type == "enum" and not self.choices:
            raise ValueError(f"parameter {self.name!r}: type enum needs 'choices'")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"parameter {self.name!r}: minimum {self.minimum} > maximum {self.maximum}")
        if self.default is not None:
            try:
                self.default = coerce_value(self, self.default)
            except ParamError as e:
                raise ValueError(f"parameter {self.name!r}: default {e.message}") from None
        return self


class AppSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str = ""
    description: str = ""
    kind: AppKind = AppKind.local
    deployment: str = Field(default="", description="name of the model deployment (in `models`) that runs this app")
    parameters: list[ParamSpec] = Field(default_factory=list)
    max_attempts: int = Field(default=3, ge=1, le=100)
    timeout_s: float = Field(default=600.0, gt=0)
    # Backpressure: submits beyond this many queued jobs answer 429 with Retry-After.
    max_queued: int = Field(default=10_000, ge=1)
    # Jobs of this app handed to its model deployment at once, across all router replicas.
    max_in_flight: int = Field(default=4, ge=1)
    synthetic: bool = Field(default=False, description="a synthetic stand-in model, not a real one")
    # What the app does; "chat" apps are also served by the OpenAI-compatible /v1/chat/completions.
    task: Literal["generic", "chat", "image", "transcription"] = "generic"
    # Other model ids the OpenAI routes take for this app (e.g. whisper-1, dall-e-3), beside its id.
    aliases: list[str] = Field(default_factory=list)
    # kind replicate|modal: where its jobs run. kind local: where they may go instead (core.cloud).
    cloud: CloudTarget | None = None
    fallback: Fallback | None = None

    @model_validator(mode="before")
    @classmethod
    def _resources_live_on_the_model(cls, data: Any) -> Any:
        # GPU memory and shares have one home, the model deployment (several apps share one model).
        if isinstance(data, dict):
            for key in ("vram_gb", "num_gpus"):
                if key in data:
                    raise ValueError(f"{key}: declared on the model deployment, not the app: set "
                                     f"models.{data.get('deployment', '<deployment>')}.{key}")
        return data

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: list[str]) -> list[str]:
        for a in v:
            if not (0 < len(a) <= 128 and a.isprintable() and a.strip() == a):
                raise ValueError(f"{a[:40]!r}: 1-128 printable characters, no surrounding spaces")
        return v

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError("must be lowercase letters, digits, '-', '_' or '.', at most 64 characters")
        return v

    @model_validator(mode="after")
    def _names(self) -> "AppSpec":
        if not self.name:
            self.name = self.id
        if self.kind == AppKind.local:
            if not self.deployment:
                raise ValueError("deployment: a local app names its model deployment")
            if self.cloud is not None:
                raise ValueError("cloud: only for kind replicate|modal; a local app's cloud is its `fallback`")
        else:
            if self.cloud is None or self.cloud.backend != self.kind.value:
                raise ValueError(f"cloud: a {self.kind.value} app needs cloud: {{backend: {self.kind.value}, ...}}")
            if self.fallback is not None:
                raise ValueError("fallback: a cloud-only app has no local side to fall back from")
        seen: set[str] = set()
        for p in self.parameters:
            if p.name in seen:
                raise ValueError(f"duplicate parameter {p.name!r}")
            seen.add(p.name)
        return self

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.parameters if p.name == name), None)

    @property
    def has_files(self) -> bool:
        return any(p.type == "file" for p in self.parameters)


class ParamError(ValueError):
    """One invalid parameter; `field` is its dotted path as the user sent it (params.width)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):  # survives pickling (crosses Ray)
        return type(self), (self.field, self.message), self.__dict__


class ParamsInvalid(ValueError):
    def __init__(self, errors: list[ParamError]):
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors

    def __reduce__(self):  # survives pickling (crosses Ray)
        return type(self), (self.errors,), self.__dict__


def text_problem(value: str) -> str | None:
    """Why a string cannot be stored (a NUL or a lone surrogate), or None."""
    m = _UNSTORABLE.search(value)
    if m is None:
        return None
    what = "a NUL character (U+0000)" if m.group() == "\x00" else f"a lone surrogate (U+{ord(m.group()):04X})"
    return f"contains {what} at position {m.start()}"


def check_text(field: str, value: Any) -> list[ParamError]:
    """Every string in a JSON value (dict keys too), each problem naming its path (params.messages[1].content)."""
    out: list[ParamError] = []
    if isinstance(value, str):
        why = text_problem(value)
        if why:
            out.append(ParamError(field, why))
    elif isinstance(value, dict):
        for k, v in value.items():
            path = f"{field}.{k}"
            if isinstance(k, str) and text_problem(k):
                out.append(ParamError(field, f"key {text_problem(k)}"))
                path = f"{field}.<key>"
            out.extend(check_text(path, v))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            out.extend(check_text(f"{field}[{i}]", v))
    return out


def _num_from_str(spec: ParamSpec, value: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise ParamError(spec.name, f"expected {spec.type}, got string {value!r}") from None


def coerce_value(spec: ParamSpec, value: Any) -> Any:
    """Check one value against its spec; numeric strings are coerced (the seed sends "1024")."""
    t = spec.type
    if t in ("integer", "number"):
        if isinstance(value, bool):
            raise ParamError(spec.name, f"expected {t}, got boolean")
        if isinstance(value, str):
            value = _num_from_str(spec, value)
        if not isinstance(value, (int, float)):
            raise ParamError(spec.name, f"expected {t}, got {type(value).__name__} {_short(value)}")
        if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
            # Checked before any float conversion: float(10**400) raises OverflowError.
            raise ParamError(spec.name, f"{_short(value)} is out of range (integers must fit in 64 bits)")
        if isinstance(value, float) and not math.isfinite(value):
            raise ParamError(spec.name, f"expected {t}, got {value!r}")
        if t == "integer":
            if isinstance(value, float) and not value.is_integer():
                raise ParamError(spec.name, f"expected integer, got {value!r}")
            if not INT_MIN <= value <= INT_MAX:
                raise ParamError(spec.name, f"{value!r} is out of range (integers must fit in 64 bits)")
            value = int(value)
        else:
            value = float(value)
        if spec.minimum is not None and value < spec.minimum:
            raise ParamError(spec.name, f"{value} is below the minimum {_fmt(spec.minimum)}")
        if spec.maximum is not None and value > spec.maximum:
            raise ParamError(spec.name, f"{value} is above the maximum {_fmt(spec.maximum)}")
        if spec.multiple_of and int(value) % spec.multiple_of:
            raise ParamError(spec.name, f"{value} is not a multiple of {spec.multiple_of}")
        return value
    if t == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        raise ParamError(spec.name, f"expected boolean, got {type(value).__name__} {value!r}")
    if t == "messages":
        return _messages(spec, value)
    if t == "enum":
        if value in spec.choices:  # type: ignore[operator]
            return value
        raise ParamError(spec.name, f"{value!r} is not one of {spec.choices}")
    # string and file (an artifact reference) are both strings
    if not isinstance(value, str):
        raise ParamError(spec.name, f"expected string, got {type(value).__name__}")
    if t == "file":
        if not value.startswith("artifact://"):
            raise ParamError(spec.name, "expected an artifact URI (artifact://...): upload the file with POST /v1/artifacts "
                                        "or submit it with POST /v1/jobs/multipart")
        check_file_format(spec, value.rsplit("/", 1)[-1])
    if spec.max_length is not None and len(value) > spec.max_length:
        raise ParamError(spec.name, f"length {len(value)} exceeds max_length {spec.max_length}")
    return value


def check_file_format(spec: ParamSpec, filename: str) -> None:
    """A file parameter's accepted extensions (case-insensitive); ParamError naming it otherwise."""
    ext = ("." + filename.rsplit(".", 1)[-1].lower()) if "." in filename else ""
    if spec.accept and ext not in spec.accept:
        raise ParamError(spec.name, f"unsupported format {ext or '(none)'!r} (accepted: {', '.join(spec.accept)})")


def _messages(spec: ParamSpec, value: Any) -> list[dict[str, str]]:
    """Chat messages: a non-empty list of {"role": system|user|assistant, "content": str}."""
    if not isinstance(value, list):
        raise ParamError(spec.name, f"expected a list of messages, got {type(value).__name__}")
    if not value:
        raise ParamError(spec.name, "must contain at least one message")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in CHAT_ROLES:
            raise ParamError(spec.name, f"[{i}] must be {{'role': one of {list(CHAT_ROLES)}, 'content': string}}")
        if spec.max_length is not None and len(m["content"]) > spec.max_length:
            raise ParamError(spec.name, f"[{i}].content length {len(m['content'])} exceeds max_length {spec.max_length}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _short(v: Any, n: int = 40) -> str:
    r = repr(v)
    return r if len(r) <= n else f"{r[:n]}... ({len(r)} characters)"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def validate_params(app: AppSpec, params: Any) -> dict[str, Any]:
    """Validate and normalise job params against the app's schema; defaults filled in.

    Raises ParamsInvalid listing every bad field (unknown, missing, wrong type, out of range).
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ParamsInvalid([ParamError("params", f"expected an object, got {type(params).__name__}")])
    errors: list[ParamError] = []
    out: dict[str, Any] = {}
    known = {p.name for p in app.parameters}
    for name in params:
        if name not in known:
            errors.append(ParamError(f"params.{name}", f"unknown parameter for app {app.id!r} (known: {sorted(known)})"))
    for spec in app.parameters:
        if spec.name not in params or params[spec.name] is None:
            if spec.required:
                errors.append(ParamError(f"params.{spec.name}", "required parameter is missing"))
            elif spec.default is not None:
                out[spec.name] = spec.default
            continue
        bad_text = check_text(f"params.{spec.name}", params[spec.name])
        if bad_text:
            errors.extend(bad_text)
            continue
        try:
            out[spec.name] = coerce_value(spec, params[spec.name])
        except ParamError as e:
            errors.append(ParamError(f"params.{spec.name}", e.message))
    if errors:
        raise ParamsInvalid(errors)
    return out


def format_pydantic_error(err: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the field path (apps[2].parameters[0].type: ...)."""
    lines = []
    for e in err.errors():
        path = prefix
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{path or '<root>'}: {msg}")
    return "\n".join(lines)
