"""Import the original system's `config/apps.yaml` (the seed format) into this project's app specs.

Seed app fields: id, name, type, queue, description, gpu_vram_gb, docker_image, endpoint, parameters.
Fields with no equivalent here are reported, never silently dropped. Pure: dicts in, dicts out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gpu_orchestrator.core.apps import AppSpec, format_pydantic_error

_TYPE_ALIASES = {
    "str": "string", "string": "string", "text": "string", "textarea": "string",
    "int": "integer", "integer": "integer",
    "float": "number", "number": "number", "double": "number",
    "bool": "boolean", "boolean": "boolean",
    "enum": "enum", "select": "enum", "choice": "enum",
    "file": "file", "image": "file", "audio": "file", "upload": "file",
}
_PARAM_KEYS = {
    "name": "name", "type": "type", "description": "description", "required": "required", "default": "default",
    "min": "minimum", "minimum": "minimum", "max": "maximum", "maximum": "maximum",
    "options": "choices", "choices": "choices", "enum": "choices", "values": "choices",
    "max_length": "max_length", "maxlength": "max_length",
}
_CLOUD = {"modal", "replicate"}


@dataclass
class SeedImport:
    apps: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)  # every field not carried over, and why


def _num(v: Any) -> Any:
    if isinstance(v, str):
        try:
            f = float(v)
            return int(f) if f.is_integer() else f
        except ValueError:
            return v
    return v


def _param(raw: Any, where: str, notes: list[str], name: str | None = None) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raw = {"default": raw}
    out: dict[str, Any] = {"name": name} if name else {}
    for k, v in raw.items():
        key = _PARAM_KEYS.get(k)
        if key is None:
            notes.append(f"{where}.{k}: no equivalent parameter field; dropped (value {v!r})")
            continue
        out[key] = v
    t = str(out.get("type", "string")).lower()
    if t not in _TYPE_ALIASES:
        notes.append(f"{where}.type: unknown type {t!r}; imported as string")
    out["type"] = _TYPE_ALIASES.get(t, "string")
    if "choices" in out and out["type"] == "string":
        out["type"] = "enum"
    if out["type"] in ("integer", "number"):
        for k in ("minimum", "maximum", "default"):
            if k in out:
                out[k] = _num(out[k])  # the seed writes numbers as strings ("1024")
    return out


def convert(seed: Any) -> SeedImport:
    """Convert a parsed seed apps.yaml ({"apps": [...]} or a bare list) to AppSpec dicts + notes."""
    items = seed.get("apps", seed) if isinstance(seed, dict) else seed
    if not isinstance(items, list):
        raise ValueError("seed apps.yaml: expected a list of apps or a mapping with 'apps'")
    apps, notes = [], []
    for i, raw in enumerate(items):
        where = f"apps[{i}]"
        if not isinstance(raw, dict) or "id" not in raw:
            raise ValueError(f"{where}: each app needs an 'id'")
        app_id = str(raw["id"])
        kind = str(raw.get("type", "local")).lower()
        app: dict[str, Any] = {
            "id": app_id,
            "name": raw.get("name", app_id),
            "description": raw.get("description", ""),
            "kind": kind if kind in _CLOUD else "local",
            "deployment": app_id,
        }
        vram = _num(raw.get("gpu_vram_gb", 0))
        if vram:  # VRAM belongs to the model deployment here (several apps can share one model)
            notes.append(f"{where}.gpu_vram_gb = {raw['gpu_vram_gb']!r}: declare it on the model deployment: "
                         f"models.{app_id}.vram_gb: {vram}")
        if kind not in _CLOUD and "type" in raw:
            notes.append(f"{where}.type: {raw['type']!r} is not a cloud backend; imported as a local app")
        params = raw.get("parameters") or []
        if isinstance(params, dict):
            app["parameters"] = [_param(v, f"{where}.parameters.{k}", notes, name=k) for k, v in params.items()]
        else:
            app["parameters"] = [_param(p, f"{where}.parameters[{j}]", notes) for j, p in enumerate(params)]
        if kind in _CLOUD:  # the seed's endpoint: a Replicate model (owner/name) or a Modal web endpoint URL
            endpoint = str(raw.get("endpoint") or "")
            if not endpoint:
                raise ValueError(f"{where} ({app_id}): a {kind} app needs its endpoint (Replicate: owner/name; "
                                 f"Modal: the web endpoint URL)")
            app.pop("deployment")
            app["cloud"] = ({"backend": "replicate", "model": endpoint} if kind == "replicate"
                            else {"backend": "modal", "endpoint": endpoint})
        for key in ("queue", "docker_image", "endpoint"):
            if key == "endpoint" and kind in _CLOUD:
                continue
            if key in raw:
                why = {
                    "queue": "each app has its own queue in Postgres; Redis queue names are not used",
                    "docker_image": "models run as Ray Serve deployments with a runtime_env, not containers; "
                                    f"write runtime_envs/{app_id}.yaml and add a '{app_id}' entry under models",
                    "endpoint": "a local app runs on this cluster; a cloud fallback is its `fallback:`",
                }[key]
                notes.append(f"{where}.{key} = {raw[key]!r}: not imported ({why})")
        for key in sorted(set(raw) - {"id", "name", "type", "queue", "description", "gpu_vram_gb", "docker_image", "endpoint", "parameters"}):
            notes.append(f"{where}.{key}: unknown seed field; dropped (value {raw[key]!r})")
        try:
            AppSpec.model_validate(app)
        except ValidationError as e:
            raise ValueError(f"{where} ({app_id}) does not convert:\n" + format_pydantic_error(e, where)) from None
        apps.append(app)
    return SeedImport(apps, notes)
