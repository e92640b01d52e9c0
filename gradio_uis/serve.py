"""The UIs as Ray Serve applications (serve_config.yaml: import_path gradio_uis.serve:build_app,
args {ui: images|speech|chat|admin, api_url: optional}).

Ray 2.60's GradioServer/GradioIngress does not work with current Gradio (500 on `/`, its queue never
starts), and an already-built FastAPI app does not serialize. What works: the ingress is a builder
FUNCTION, run inside the replica, that builds the Blocks and mounts them with gr.mount_gradio_app.
One replica per UI: Gradio keeps its request queue and sessions in the process.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

UIS = ("images", "speech", "chat", "admin")


def _asgi_builder(ui: str, api: str | None):
    def build():  # runs in the replica
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        import gradio as gr
        from fastapi import FastAPI

        from gradio_uis.common import CSS, THEME

        blocks = importlib.import_module(f"gradio_uis.{ui}").build(api)
        return gr.mount_gradio_app(FastAPI(), blocks, path="/", theme=THEME, css=CSS, ssr_mode=False)
    return build


def build_app(args: dict[str, Any]):
    """A Serve application for one UI. `api_url`: the router's URL (default: $GPU_ORCH_URL, which
    `gpu-orch up` sets, else http://127.0.0.1:8000; every node runs a Serve proxy there)."""
    from ray import serve

    ui = (args or {}).get("ui")
    if ui not in UIS:
        raise ValueError(f"args.ui: must be one of {', '.join(UIS)} (got {ui!r})")
    unknown = set(args) - {"ui", "api_url", "num_cpus"}
    if unknown:
        raise ValueError(f"args: unknown field(s) {', '.join(sorted(unknown))} (known: ui, api_url, num_cpus)")

    @serve.ingress(_asgi_builder(ui, args.get("api_url")))
    class UI:
        pass

    return serve.deployment(UI, name=f"ui-{ui}", num_replicas=1,
                            ray_actor_options={"num_cpus": float(args.get("num_cpus", 0.1))}).bind()
