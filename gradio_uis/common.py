"""What the UIs share: the offline theme, the router's URL, readable errors, job progress text,
and the standalone entry point."""

from __future__ import annotations

import argparse
import html
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a UI process

import gradio as gr  # noqa: E402

import httpx  # noqa: E402

from gpu_orchestrator.client import DEFAULT_URL, ApiError, AsyncClient, auth_headers  # noqa: E402

# System fonts: Gradio's default theme loads Google Fonts, and the UIs must work with no internet.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
CSS = """
#progress .bar { height: 10px; background: var(--color-accent); border-radius: 4px; transition: width .2s; }
#progress .track { background: var(--block-border-color); border-radius: 4px; margin: 4px 0; }
.error { color: var(--error-text-color, #b91c1c); font-weight: 600; }
"""


# Events each UI runs at once (Gradio's default, 1, would make every user wait on the others' jobs).
CONCURRENCY = 32
# Gradio's own cache of served files: swept hourly of anything a day old (a UI runs for months).
DELETE_CACHE = (3600, 86_400)


def output_dir(ui: str) -> Path:
    """Where a UI writes the files it shows (downloaded images, transcripts) before Gradio serves them."""
    return Path(tempfile.mkdtemp(prefix=f"gpu-orch-ui-{ui}-"))


def sweep(directory: Path, max_age_s: float = DELETE_CACHE[1]) -> None:
    """Drop this UI's files older than `max_age_s` (called per request: no thread of its own)."""
    cutoff = time.time() - max_age_s
    for f in directory.iterdir():
        try:
            if f.stat().st_mtime < cutoff:
                f.unlink()
        except OSError:
            pass


class KeyLogin:
    """Sign-in when the router needs API keys: the user name is the key's name, the password the
    key itself, checked against the router (GET /v1/keys/me). Each signed-in user's requests then
    carry their own key, so they see their own jobs and what their scopes allow. Kept in this
    process only (one replica per UI); a revoked key fails the user's next request."""

    def __init__(self, url: str):
        self.url = url
        self._keys: dict[str, str] = {}

    def __call__(self, username: str, password: str) -> bool:
        try:
            r = httpx.get(f"{self.url}/v1/keys/me", headers=auth_headers(password.strip()), timeout=10)
        except httpx.HTTPError:
            return False
        if r.status_code != 200 or r.json().get("name") != username.strip():
            return False
        self._keys[username.strip()] = password.strip()
        return True

    def key(self, request: gr.Request | None) -> str | None:
        return self._keys.get(getattr(request, "username", None) or "")


LOGIN_MESSAGE = "This stack needs an API key: user name = the key's name, password = the key (gpu-orch keys create)."
_LOGINS: dict[str, KeyLogin] = {}


def login_for(url: str) -> KeyLogin:
    return _LOGINS.setdefault(url, KeyLogin(url))


def client(url: str, request: gr.Request | None = None) -> AsyncClient:
    """A client of the router as the signed-in user (their key), or as this process is configured
    ($GPU_ORCH_API_KEY, else none) when the stack runs open."""
    login = _LOGINS.get(url)
    key = login.key(request) if login is not None else None
    return AsyncClient(url, api_key=key or None)


def api_url(explicit: str | None = None) -> str:
    """The router the UI talks to: the argument, else GPU_ORCH_URL (what `gpu-orch up` sets), else
    the default local stack."""
    return (explicit or os.environ.get("GPU_ORCH_URL") or DEFAULT_URL).rstrip("/")


def explain(e: BaseException) -> str:
    """A router error as a user reads it: each bad field and why, never a stack trace."""
    if isinstance(e, ApiError):
        body = e.body if isinstance(e.body, dict) else {}
        fields = body.get("fields") or []
        if fields:
            return "; ".join(f"{f.get('field', '?').removeprefix('params.')}: {f.get('message', '')}" for f in fields)
        msg = e.message
        if e.status == 429 or e.status == 503:
            msg += f" (try again in {e.retry_after} s)" if e.retry_after else " (try again shortly)"
        return msg
    if isinstance(e, TimeoutError):
        return f"timed out: {e}"
    # Connection problems and the like: the router is unreachable, say where.
    return f"could not reach the orchestrator: {type(e).__name__}: {e}"


def typed_int(text: Any) -> Any:
    """An optional integer typed in a text box: blank -> None, digits -> int, anything else as typed
    (the router's message then names the field)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    return int(text) if isinstance(text, str) and text.strip().isdigit() else text


def error_html(message: str) -> str:
    return f'<div class="error" role="alert">{html.escape(message)}</div>'


def progress_html(fraction: float | None, text: str) -> str:
    """The live progress bar (an element tests and users can read: its text says the stage)."""
    pct = 0 if fraction is None else max(0, min(100, round(fraction * 100)))
    return (f'<div class="track"><div class="bar" style="width:{pct}%"></div></div>'
            f'<div class="progress-text" data-pct="{pct}">{html.escape(text)}</div>')


def event_progress(ev: dict[str, Any]) -> tuple[float | None, str] | None:
    """(fraction, text) for one SSE event of a job, or None when it changes nothing shown."""
    data = ev.get("data") or {}
    if ev.get("event") == "status":
        st = data.get("status")
        if st == "queued":
            return 0.0, "queued" + (f" (attempt {data['attempts'] + 1})" if data.get("attempts") else "")
        if st == "running":
            return 0.0, f"running (attempt {data.get('attempt') or data.get('attempts') or 1})"
        return (1.0 if st == "succeeded" else None), st or ""
    if ev.get("event") == "waiting":  # its model is not loaded yet (the arbiter): say which, and how long
        return 0.0, str(data.get("message") or "waiting for its model")
    if ev.get("event") == "progress":
        if data.get("steps"):
            return data["step"] / data["steps"], f"step {data['step']}/{data['steps']}"
        if data.get("stage"):
            return None, str(data["stage"])
    return None


def where_ran(job: dict[str, Any]) -> str:
    """`local:sdxl` -> "this cluster (sdxl)"; a cloud run by its provider and model, and why it went there."""
    backend = job.get("backend") or "-"
    kind, _, name = backend.partition(":")
    if kind == "local" and name:
        return f"this cluster ({name})"
    if kind in ("replicate", "modal") and name:
        why = job.get("route_reason")
        return f"{kind.capitalize()} ({name})" + (f", because {why}" if why else "")
    return backend


def job_line(job: dict[str, Any]) -> str:
    return (f"job `{job['job_id']}` · {job['status']} · attempt {job.get('attempts', 0)}/{job.get('max_attempts', '?')}"
            f" · ran on: {where_ran(job)}")


def _num(x: Any) -> str:
    return "" if x is None else str(int(x)) if float(x).is_integer() else str(x)


def app_param(app: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """One parameter of an app as GET /v1/apps lists it, or None."""
    return next((p for p in (app or {}).get("parameters", []) if p["name"] == name), None)


def param_info(app: dict[str, Any] | None, name: str) -> str | None:
    """The router's default and limits for one param, as a hint under its input (the router still checks)."""
    p = app_param(app, name)
    if p is None:
        return None
    bits = [f"default {_num(p['default'])}"] if p.get("default") is not None else []
    if p.get("minimum") is not None or p.get("maximum") is not None:
        bits.append(f"{_num(p.get('minimum'))}–{_num(p.get('maximum'))}")
    if p.get("multiple_of"):
        bits.append(f"multiple of {p['multiple_of']}")
    return ", ".join(bits) or None


def standalone(build: Callable[[str], gr.Blocks], what: str) -> None:
    """`python -m gradio_uis.NAME --api URL [--port N]`: the UI alone, against a running router."""
    ap = argparse.ArgumentParser(description=f"GPU Orchestrator {what} UI (talks to the router's API)")
    ap.add_argument("--api", default=None, help=f"the router's URL (default: $GPU_ORCH_URL or {DEFAULT_URL})")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    a = ap.parse_args()
    build(api_url(a.api)).launch(server_name=a.host, server_port=a.port, theme=THEME, css=CSS, ssr_mode=False)
