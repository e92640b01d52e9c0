"""The orchestrator's models on Modal: the SAME model classes the local deployments run
(gpu_orchestrator.models), loaded once per container, one method per task. The router's Modal
fallback calls them by name, so a job that overflows to Modal runs exactly our model code.

Deploy:  modal deploy cloud/modal_app.py   (needs `pip install modal` and `modal token new`)

Names the router's config refers to (app "gpu-orchestrator"):

| class   | method       | GPU        | router config                                                       |
|---------|--------------|------------|---------------------------------------------------------------------|
| SDXL    | generate     | L40S       | {backend: modal, app: gpu-orchestrator, cls: SDXL, method: generate, gpu: L40S}   |
| ZImage  | generate     | L40S       | {backend: modal, app: gpu-orchestrator, cls: ZImage, method: generate, gpu: L40S} |
| Whisper | transcribe   | L4         | {backend: modal, app: gpu-orchestrator, cls: Whisper, method: transcribe, gpu: L4} |
| LLM     | chat         | A100-80GB  | {backend: modal, app: gpu-orchestrator, cls: LLM, method: chat, gpu: A100-80GB}   |

GPUs: the smallest Modal GPU that holds each model with its working memory (SDXL fp16 ~10 GB at
1024px, Z-Image ~20 GB: L40S 48 GB; Whisper large-v3 ~10 GB: L4 24 GB; Qwen2.5-7B on vLLM with its
KV cache: A100-80GB). Prices are in gpu_orchestrator/core/costs.py (MODAL_GPU_PER_S).

Each method takes (params, files): our validated params, and the job's input files inline
({param: {"name", "data_b64"}}; cloud_payload.pack_inputs); it returns our result shape with its
output files inline (the router stores them in its artifact store). The same body is also a web
endpoint per class (`POST` {"params", "files"}, `requires_proxy_auth`): the router's `endpoint:`
mode, with Modal-Key / Modal-Secret headers.

Importing this file needs only the `modal` package: no network, no credentials (CI imports it).
"""

from __future__ import annotations

import asyncio
import importlib
import uuid
from pathlib import Path
from typing import Any

import modal

APP_NAME = "gpu-orchestrator"
ARTIFACTS = "/tmp/gpu-orch-artifacts"  # the container's own store; files leave inline

# The real profile's model init (serve_config.yaml's models.<name>.init), with the GPU each gets.
MODELS: dict[str, dict[str, Any]] = {
    "SDXL": {"impl": "gpu_orchestrator.models.sdxl:SDXL", "gpu": "L40S",
             "init": {"model": "stabilityai/stable-diffusion-xl-base-1.0", "variant": "fp16"}},
    "ZImage": {"impl": "gpu_orchestrator.models.zimage:ZImage", "gpu": "L40S",
               "init": {"model": "Tongyi-MAI/Z-Image-Turbo"}},
    "Whisper": {"impl": "gpu_orchestrator.models.whisper:Whisper", "gpu": "L4", "init": {"model": "large-v3"}},
    "LLM": {"impl": "gpu_orchestrator.models.llm:LLM", "gpu": "A100-80GB",
            "init": {"model": "Qwen/Qwen2.5-7B-Instruct", "engine": "auto", "max_model_len": 8192}},
}

_ROOT = Path(__file__).resolve().parents[1]
image = (
    modal.Image.debian_slim(python_version="3.11")
    .apt_install("ffmpeg")
    .pip_install("torch==2.13.0", "numpy>=1.26", "pillow>=10", "pydantic>=2.6", "pyyaml>=6", "httpx>=0.27",
                 "fsspec>=2024.2", "redis>=5", "diffusers>=0.36,<1", "transformers>=4.51,<6", "tokenizers>=0.20",
                 "safetensors>=0.4", "accelerate>=1.0", "openai-whisper==20250625", "vllm>=0.11",
                 "fastapi[standard]")
    .env({"TOKENIZERS_PARALLELISM": "false", "HF_HUB_ENABLE_HF_TRANSFER": "0"})
    .add_local_python_source("gpu_orchestrator")
)
app = modal.App(APP_NAME, image=image)


def build_model(name: str, artifacts: str = ARTIFACTS, init: dict[str, Any] | None = None) -> Any:
    """The model object, as a local replica builds it (no Redis: progress stays in the container)."""
    spec = MODELS[name]
    module, cls = spec["impl"].split(":")
    kwargs = dict(spec["init"] if init is None else init)
    kwargs.setdefault("artifacts_url", artifacts)
    return getattr(importlib.import_module(module), cls)(**kwargs)


def run_model(model: Any, params: dict[str, Any], files: dict[str, Any] | None, artifacts: str = ARTIFACTS,
              timeout_s: float | None = None) -> Any:
    """One job, the local deployment's way (`run`, with its timeout and load-error handling), with
    input files unpacked into the container's store and output files inlined for the trip back."""
    from gpu_orchestrator.artifacts import ArtifactStore
    from gpu_orchestrator.service.cloud_payload import inline_artifacts, unpack_inputs

    store = ArtifactStore(artifacts)
    params = unpack_inputs(params, files or {}, store)
    result = asyncio.run(model.run(f"modal-{uuid.uuid4().hex}", params, 1, timeout_s=timeout_s))
    return inline_artifacts(result, store)


def _model_class(name: str, method: str) -> Any:
    """A Modal class for one model: loads at container start, serves `method` and a web endpoint."""

    class Served:
        @modal.enter()
        def load(self) -> None:
            self.model = build_model(name)
            if getattr(self.model, "load_error", None):
                raise RuntimeError(self.model.load_error)  # a container that cannot load must not serve

        def _run(self, params: dict[str, Any], files: dict[str, Any] | None = None) -> Any:
            return run_model(self.model, params, files)

        @modal.fastapi_endpoint(method="POST", requires_proxy_auth=True)
        def web(self, body: dict[str, Any]) -> Any:
            return self._run(body.get("params") or {}, body.get("files") or {})

    def task(self, params: dict[str, Any], files: dict[str, Any] | None = None) -> Any:
        return self._run(params, files)

    task.__name__ = method
    setattr(Served, method, modal.method()(task))
    Served.__name__ = Served.__qualname__ = name
    return app.cls(gpu=MODELS[name]["gpu"], scaledown_window=300, timeout=1800, serialized=True)(Served)


SDXL = _model_class("SDXL", "generate")
ZImage = _model_class("ZImage", "generate")
Whisper = _model_class("Whisper", "transcribe")
LLM = _model_class("LLM", "chat")
