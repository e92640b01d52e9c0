"""The orchestrator's models on Modal: the SAME model classes the local deployments run (the `impl`
of serve_config.yaml's models), built with the real profile's `init`, loaded once per container,
one method per task. The router's Modal fallback calls them by name, so a job that overflows to
Modal runs exactly our model code.

Deploy:  modal deploy deploy/modal/modal_app.py   (needs `pip install -e .[cloud]` and `modal token new`)

Names the router's config refers to (app "gpu-orchestrator"):

| class   | method       | GPU        | router config                                                                      |
|---------|--------------|------------|------------------------------------------------------------------------------------|
| SDXL    | generate     | L40S       | {backend: modal, app: gpu-orchestrator, cls: SDXL, method: generate, gpu: L40S}    |
| ZImage  | generate     | L40S       | {backend: modal, app: gpu-orchestrator, cls: ZImage, method: generate, gpu: L40S}  |
| Whisper | transcribe   | L4         | {backend: modal, app: gpu-orchestrator, cls: Whisper, method: transcribe, gpu: L4} |
| LLM     | chat         | A100-80GB  | {backend: modal, app: gpu-orchestrator, cls: LLM, method: chat, gpu: A100-80GB}    |

GPUs: the cheapest Modal GPU that holds each model with its working memory. SDXL fp16 takes ~10 GB
at 1024px and Z-Image-Turbo (bf16) ~20-25 GB: L40S (48 GB; an A10G's 24 GB is too tight for
Z-Image and slower for SDXL). Whisper large-v3 takes ~10 GB: L4 (24 GB). Qwen2.5-7B on vLLM takes
15 GB of weights plus its KV cache for 8192-token contexts and 32 concurrent chats: A100-80GB (an
A100-40GB or L40S also runs it, with less KV cache). Per-second prices are in
gpu_orchestrator/core/costs.py (MODAL_GPU_PER_S: L4 $0.000222/s, L40S $0.000542/s, A100-80GB
$0.000694/s); set `gpu:` in the router's config to the class's GPU so job costs are right. Containers
stay up `scaledown_window` (300 s) after their last call, and are billed for it.

Each method takes (params, files[, timeout_s]): our validated params, and the job's input files
inline ({param: {"name", "data_b64"}}; gpu_orchestrator.service.cloud.payload.pack_inputs). It
returns our result shape with its output files inline ({"inline": {"name", "data_b64"}} where the
local model has {"artifact", "url"}; the router stores them: cloud_payload.store_inlined). A model
error comes back as the model's own error type when it is one of ours (JobTimeout, ModelLoadError,
...), else as a RuntimeError("<Type>: message") (the router has no torch or vLLM to unpickle
theirs). Each class also has a web endpoint, `web` (`POST` {"params", "files"}, requires_proxy_auth:
Modal-Key / Modal-Secret headers): the router's `endpoint:` mode. A model error there answers
HTTP 422 {"error": ...}, so the router fails the attempt instead of retrying it as an outage.

Models: serve_config.yaml's `models.<sdxl|zimage|whisper|llm>` (impl, init) when the file is at
hand: $GPU_ORCH_SERVE_CONFIG, else the repository's serve_config.yaml (shipped into the containers,
so they read the same file); else DEFAULT_MODELS below (the real profile as of this writing;
tests/unit/test_modal_app.py checks they agree). `vram_gb` is not passed: on Modal each model has a
whole GPU (vLLM then takes 90% of it, not the local 22/80 share). Weights are downloaded on the first
cold start into the `gpu-orch-model-cache` volume (Hugging Face and whisper caches), and read from it
after. Files go through the container's own artifact store (/tmp/gpu-orch-artifacts), removed after
each call.

Importing this file needs only the `modal` package: no network, no credentials (CI imports it).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import uuid
from pathlib import Path
from typing import Any

import modal

APP_NAME = "gpu-orchestrator"
ARTIFACTS = "/tmp/gpu-orch-artifacts"  # the container's own store; files leave inline
CACHE = "/cache"  # the model-weights volume (XDG cache: huggingface/, whisper/, vllm/)
CACHE_VOLUME = "gpu-orch-model-cache"
CONFIG_ENV = "GPU_ORCH_SERVE_CONFIG"
CONFIG_IN_CONTAINER = "/opt/gpu-orch/serve_config.yaml"

# Modal class -> (serve_config.yaml model key, method, GPU).
CLASSES: dict[str, tuple[str, str, str]] = {
    "SDXL": ("sdxl", "generate", "L40S"),
    "ZImage": ("zimage", "generate", "L40S"),
    "Whisper": ("whisper", "transcribe", "L4"),
    "LLM": ("llm", "chat", "A100-80GB"),
}

# serve_config.yaml's real profile (models.<key>: impl, init), used where that file is not at hand.
DEFAULT_MODELS: dict[str, dict[str, Any]] = {
    "sdxl": {"impl": "deployments.sdxl:SDXL",
             "init": {"model": "stabilityai/stable-diffusion-xl-base-1.0", "variant": "fp16"}},
    "zimage": {"impl": "deployments.zimage:ZImage", "init": {"model": "Tongyi-MAI/Z-Image-Turbo"}},
    "whisper": {"impl": "deployments.whisper_model:Whisper", "init": {"model": "large-v3"}},
    "llm": {"impl": "deployments.llm:LLM",
            "init": {"model": "Qwen/Qwen2.5-7B-Instruct", "engine": "auto", "max_model_len": 8192}},
}

# The packages of each model's runtime_env (runtime_envs/*.yaml) on top of the base install
# (pyproject.toml's dependencies that the model code imports). The LLM image leaves torch to vLLM,
# which pins its own (as runtime_envs/llm-vllm.yaml does locally).
BASE_PACKAGES = ["numpy>=1.26", "pillow>=10", "pyyaml>=6", "httpx>=0.27", "redis>=5.0", "fsspec>=2024.2",
                 "pydantic>=2.6", "fastapi[standard]"]
TORCH = "torch==2.13.0"
PACKAGES: dict[str, list[str]] = {
    "diffusion": [TORCH, "diffusers>=0.36,<1", "transformers>=4.51,<6", "tokenizers>=0.20", "safetensors>=0.4",
                  "accelerate>=1.0"],
    "whisper": [TORCH, "openai-whisper==20250625", "imageio-ffmpeg>=0.5"],
    "llm": ["vllm>=0.10", "transformers>=4.51,<6"],
}
IMAGE_OF = {"SDXL": "diffusion", "ZImage": "diffusion", "Whisper": "whisper", "LLM": "llm"}

_ROOT = Path(__file__).resolve().parents[2]


def _config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or _ROOT / "serve_config.yaml")


def model_inits(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """{model key: {"impl", "init"}} of the real profile: serve_config.yaml's (`path`, else
    $GPU_ORCH_SERVE_CONFIG, else the repository's) over DEFAULT_MODELS; DEFAULT_MODELS alone when
    there is no such file."""
    out = {k: {"impl": v["impl"], "init": dict(v["init"])} for k, v in DEFAULT_MODELS.items()}
    p = Path(path) if path is not None else _config_path()
    if not p.is_file():
        return out
    import yaml

    doc = yaml.safe_load(p.read_text()) or {}
    apps = doc.get("applications") or [{"args": doc.get("args") or doc}]  # a deploy config, or bare args
    for a in apps:
        models = ((a or {}).get("args") or {}).get("models")
        if isinstance(models, dict):
            for key, m in models.items():
                if key in out and isinstance(m, dict):
                    out[key] = {"impl": m.get("impl", out[key]["impl"]), "init": dict(m.get("init") or {})}
            break
    return out


def _image(kind: str) -> modal.Image:
    image = (
        modal.Image.debian_slim(python_version="3.11")
        .apt_install("ffmpeg")
        .pip_install(*BASE_PACKAGES, *PACKAGES[kind])
        .env({"TOKENIZERS_PARALLELISM": "false", "XDG_CACHE_HOME": CACHE, "HF_HOME": f"{CACHE}/huggingface",
              CONFIG_ENV: CONFIG_IN_CONTAINER})
        .add_local_python_source("gpu_orchestrator", "deployments")
    )
    config = _config_path()
    if modal.is_local() and config.is_file():  # the containers read the same serve_config.yaml
        image = image.add_local_file(config, CONFIG_IN_CONTAINER)
    return image


app = modal.App(APP_NAME)
images = {kind: _image(kind) for kind in PACKAGES}
cache = modal.Volume.from_name(CACHE_VOLUME, create_if_missing=True)  # lazy: no network at import


def build_model(name: str, artifacts: str = ARTIFACTS, spec: dict[str, Any] | None = None) -> Any:
    """The model object of Modal class `name`, as a local replica builds it from its impl and init,
    with the container's store and no Redis (progress events stay in the container)."""
    spec = spec or model_inits()[CLASSES[name][0]]
    module, attr = spec["impl"].split(":")
    cls = getattr(importlib.import_module(module), attr)
    kwargs = dict(spec["init"])
    if "artifacts_url" in inspect.signature(cls.__init__).parameters:  # as serve/app.py does
        kwargs.setdefault("artifacts_url", artifacts)
    return cls(**kwargs)


def _artifact_uris(result: Any) -> list[str]:
    if isinstance(result, list):
        return [u for v in result for u in _artifact_uris(v)]
    if isinstance(result, dict):
        if isinstance(result.get("artifact"), str):
            return [result["artifact"]]
        return [u for v in result.values() for u in _artifact_uris(v)]
    return []


def _portable(e: Exception) -> Exception:
    """An error the router can unpickle: ours as they are, any other as RuntimeError("Type: msg")."""
    if type(e).__module__.startswith("gpu_orchestrator.") or type(e).__module__ == "builtins":
        return e
    return RuntimeError(f"{type(e).__name__}: {e}")


async def run_model_async(model: Any, params: dict[str, Any], files: dict[str, Any] | None, store: Any = None,
                          *, timeout_s: float | None = None) -> Any:
    """One job the local deployment's way (`model.run`: its slots, timeout, load-error handling),
    with input files unpacked into `store` (default: the model's own, else ARTIFACTS) and output
    files inlined for the trip back; the call's files are removed from the store after."""
    from gpu_orchestrator.store.artifacts import ArtifactStore
    from gpu_orchestrator.service.cloud.payload import inline_artifacts, unpack_inputs

    if store is None:
        store = getattr(model, "artifacts", None) or ArtifactStore(ARTIFACTS)
    elif isinstance(store, (str, Path)):
        store = ArtifactStore(store)
    inputs = dict(params or {})
    unpacked = await asyncio.to_thread(unpack_inputs, inputs, files or {}, store)
    made = [v for k, v in unpacked.items() if k in (files or {})]
    job_id = f"modal-{modal.current_input_id() or uuid.uuid4().hex}"  # one per input (retries: the same)
    try:
        try:
            result = await model.run(job_id, unpacked, 1, timeout_s=timeout_s)
        except Exception as e:
            raise _portable(e) from None
        made += _artifact_uris(result)
        return await asyncio.to_thread(inline_artifacts, result, store)
    finally:
        for uri in made:
            try:
                store.delete(uri)
            except Exception:  # cleanup is best effort
                pass


def run_model(model: Any, params: dict[str, Any], files: dict[str, Any] | None, store: Any = None,
              *, timeout_s: float | None = None) -> Any:
    """run_model_async from synchronous code (tests, scripts): a fresh event loop per call. The Modal
    classes await run_model_async on their container's one loop instead (vLLM's engine is bound to it)."""
    return asyncio.run(run_model_async(model, params, files, store, timeout_s=timeout_s))


class _Served:
    """What every class shares: load at container start, one job per call, the web endpoint."""

    name = ""

    @modal.enter()
    def load(self) -> None:
        self.model = build_model(self.name)
        if getattr(self.model, "load_error", None):
            raise RuntimeError(self.model.load_error)  # a container that cannot load must not serve

    async def _call(self, params: dict[str, Any], files: dict[str, Any] | None, timeout_s: float | None) -> Any:
        return await run_model_async(self.model, params, files, timeout_s=timeout_s)

    @modal.fastapi_endpoint(method="POST", requires_proxy_auth=True)
    async def web(self, body: dict[str, Any]) -> Any:
        from fastapi.responses import JSONResponse

        try:
            return await self._call(body.get("params") or {}, body.get("files") or {}, body.get("timeout_s"))
        except Exception as e:  # the model's error: a 4xx, so the router does not retry it as an outage
            return JSONResponse({"error": f"{type(e).__name__}: {e}"}, status_code=422)


def _cls(name: str, **kw: Any) -> Any:
    return app.cls(image=images[IMAGE_OF[name]], gpu=CLASSES[name][2], volumes={CACHE: cache},
                   scaledown_window=300, timeout=1800, **kw)


@_cls("SDXL")
class SDXL(_Served):
    name = "SDXL"

    @modal.method()
    async def generate(self, params: dict[str, Any], files: dict[str, Any] | None = None,
                       timeout_s: float | None = None) -> Any:
        return await self._call(params, files, timeout_s)


@_cls("ZImage")
class ZImage(_Served):
    name = "ZImage"

    @modal.method()
    async def generate(self, params: dict[str, Any], files: dict[str, Any] | None = None,
                       timeout_s: float | None = None) -> Any:
        return await self._call(params, files, timeout_s)


@_cls("Whisper")
class Whisper(_Served):
    name = "Whisper"

    @modal.method()
    async def transcribe(self, params: dict[str, Any], files: dict[str, Any] | None = None,
                         timeout_s: float | None = None) -> Any:
        return await self._call(params, files, timeout_s)


@_cls("LLM")
@modal.concurrent(max_inputs=32)  # vLLM batches concurrent chats (serve_config: max_ongoing_requests 32)
class LLM(_Served):
    name = "LLM"

    @modal.method()
    async def chat(self, params: dict[str, Any], files: dict[str, Any] | None = None,
                   timeout_s: float | None = None) -> Any:
        return await self._call(params, files, timeout_s)
