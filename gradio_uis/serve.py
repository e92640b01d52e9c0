"""The UIs as Ray Serve applications (serve_config.yaml: import_path gradio_uis.serve:build_app,
args {uis: [images, speech, chat, admin] | ui: one of them, api_url: optional, auth: auto|on|off}).

Ray 2.60's GradioServer/GradioIngress does not work with current Gradio (500 on `/`, its queue never
starts), and an already-built FastAPI app does not serialize. What works: the ingress is a builder
FUNCTION, run inside the replica, that builds the Blocks and mounts them with gr.mount_gradio_app.
One replica serves every page of the application (`uis`: each at /<name>/ under its route prefix;
`ui`: one page at the prefix itself): Gradio keeps its request queue and sessions in the process, and
a replica costs an idle stack CPU and ~220 MB whether it serves one page or four (bench/idle.py).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

UIS = ("images", "speech", "chat", "admin")


def asgi_builder(ui: str | list[str], api: str | None, auth: bool = False):
    """One page at "/" (`ui` a name), or several, each at "/<name>" (a list). `auth`: the router
    needs API keys, so each page asks its user to sign in with theirs."""
    def build():  # runs in the replica
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        import gradio as gr
        from fastapi import FastAPI

        from gradio_uis.common import CSS, LOGIN_MESSAGE, THEME, api_url, login_for

        app = FastAPI()
        if not isinstance(ui, str):  # the prefix itself (/ui/) leads to the first page
            from fastapi.responses import RedirectResponse

            first = ui[0]
            app.add_route("/", lambda request: RedirectResponse(f"{request.scope.get('root_path', '').rstrip('/')}/{first}/"),
                          include_in_schema=False)
        login = dict(auth=login_for(api_url(api)), auth_message=LOGIN_MESSAGE) if auth else {}
        for name, path in ([(ui, "/")] if isinstance(ui, str) else [(u, f"/{u}") for u in ui]):
            blocks = importlib.import_module(f"gradio_uis.{name}").build(api)
            app = gr.mount_gradio_app(app, blocks, path=path, theme=THEME, css=CSS, ssr_mode=False, **login)
            quiet_queue(blocks)
        return app
    return build


# Gradio's queue looks for work every 1 ms (and for progress every 10 ms) while it has none: most
# of an idle UI replica's CPU. These are Gradio's own values on Windows; a click waits 50 ms more.
QUEUE_IDLE_S, PROGRESS_IDLE_S = 0.05, 0.1


def quiet_queue(blocks: Any) -> None:
    queue = getattr(blocks, "_queue", None)
    if queue is None or not hasattr(queue, "sleep_when_free"):
        return  # another Gradio: nothing to tune (tests/unit/test_ui_views.py notices)
    queue.sleep_when_free = QUEUE_IDLE_S
    queue.progress_update_sleep_when_free = PROGRESS_IDLE_S


def pages(args: dict[str, Any]) -> list[str]:
    """The pages a UI application's args name, checked: `uis` (several) or `ui` (one)."""
    args = args or {}
    unknown = set(args) - {"ui", "uis", "api_url", "num_cpus", "auth"}
    if unknown:
        raise ValueError(f"args: unknown field(s) {', '.join(sorted(unknown))} (known: uis, ui, api_url, num_cpus, auth)")
    if ("ui" in args) == ("uis" in args):
        raise ValueError("args: set `uis` (a list of pages) or `ui` (one page), not both or neither")
    names = [args["ui"]] if "ui" in args else args["uis"]
    if not isinstance(names, list) or not names or len(set(map(str, names))) != len(names):
        raise ValueError(f"args.uis: a list of distinct pages from {', '.join(UIS)} (got {names!r})")
    for n in names:
        if n not in UIS:
            raise ValueError(f"args.{'ui' if 'ui' in args else 'uis'}: must be one of {', '.join(UIS)} (got {n!r})")
    return names


def page_paths(app: dict[str, Any]) -> list[str]:
    """The URL paths of a UI application's pages (serve_config.yaml entry), for `gpu-orch up`'s listing."""
    prefix = (app.get("route_prefix") or "/").rstrip("/")
    args = app.get("args") or {}
    if "uis" in args:
        return [f"{prefix}/{u}/" for u in args["uis"]]
    return [f"{prefix}/"]


def build_app(args: dict[str, Any]):
    """A Serve application for the UI pages. `api_url`: the router's URL (default: $GPU_ORCH_URL, which
    `gpu-orch up` sets, else http://127.0.0.1:8000; every node runs a Serve proxy there)."""
    from ray import serve

    names = pages(args)
    mode = args.get("auth", "auto")
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"args.auth: must be auto, on or off (got {mode!r})")
    from gpu_orchestrator.core.keys import auth_required
    from gpu_orchestrator.serve.app import serve_http_host

    # As the router decides (router.auth): auto asks users to sign in unless Serve listens on loopback only.
    @serve.ingress(asgi_builder(args["uis"] if "uis" in args else args["ui"], args.get("api_url"),
                                auth_required(mode, serve_http_host())))
    class UI:
        pass

    return serve.deployment(UI, name="ui" if "uis" in args else f"ui-{names[0]}", num_replicas=1,
                            ray_actor_options={"num_cpus": float(args.get("num_cpus", 0.1))}).bind()
