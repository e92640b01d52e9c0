"""How files cross to and from a cloud worker that cannot read our artifact store: inline, as
base64 in the call's JSON. The router packs a job's file params and stores the files a result
carries; deploy/modal/modal_app.py does the reverse on the worker with its own local store.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Protocol

from gpu_orchestrator.store.artifacts import http_path, safe_name


class Store(Protocol):
    def read(self, uri: str) -> bytes: ...
    def put(self, data: bytes, *, name: str, prefix: str = ...) -> str: ...


def _b64(s: Any, where: str) -> bytes:
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise ValueError(f"{where}: data_b64 is not base64") from None


def pack_inputs(params: dict[str, Any], file_params: list[str], store: Store) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, files): each file param's bytes as {"name", "data_b64"}, keyed by the param."""
    files = {}
    for name in file_params:
        uri = params.get(name)
        if isinstance(uri, str) and uri:
            files[name] = {"name": uri.rsplit("/", 1)[-1], "data_b64": base64.b64encode(store.read(uri)).decode()}
    return params, files


def unpack_inputs(params: dict[str, Any], files: dict[str, Any], store: Store) -> dict[str, Any]:
    """On the worker: each file written to its own store, the param pointing at it."""
    out = dict(params)
    for name, f in (files or {}).items():
        if not isinstance(f, dict):
            raise ValueError(f"files.{name}: expected {{\"name\", \"data_b64\"}}")
        out[name] = store.put(_b64(f.get("data_b64"), f"files.{name}"), name=safe_name(str(f.get("name") or name)),
                              prefix="uploads")
    return out


def inline_artifacts(result: Any, store: Store) -> Any:
    """On the worker: every {"artifact": uri, ...} in the result carries its bytes instead."""
    if isinstance(result, list):
        return [inline_artifacts(v, store) for v in result]
    if not isinstance(result, dict):
        return result
    if isinstance(result.get("artifact"), str):
        rest = {k: v for k, v in result.items() if k not in ("artifact", "url")}
        uri = result["artifact"]
        return {**rest, "inline": {"name": uri.rsplit("/", 1)[-1],
                                   "data_b64": base64.b64encode(store.read(uri)).decode()}}
    return {k: inline_artifacts(v, store) for k, v in result.items()}


def store_inlined(result: Any, store: Store | None, prefix: str, where: str = "result") -> Any:
    """On the router: every {"inline": {...}} in a result becomes a file in our store, referenced
    as the local models reference theirs ({"artifact": uri, "url": path})."""
    if isinstance(result, list):
        return [store_inlined(v, store, prefix, f"{where}[{i}]") for i, v in enumerate(result)]
    if not isinstance(result, dict):
        return result
    if isinstance(result.get("inline"), dict):
        if store is None:
            raise ValueError(f"{where}: the result carries a file and this router has no artifact store")
        f = result["inline"]
        uri = store.put(_b64(f.get("data_b64"), where), name=safe_name(str(f.get("name") or "file")), prefix=prefix)
        rest = {k: v for k, v in result.items() if k not in ("inline", "artifact", "url")}  # ours, not the worker's
        return {"artifact": uri, "url": http_path(uri), **rest}
    return {k: store_inlined(v, store, prefix, f"{where}.{k}") for k, v in result.items()}
