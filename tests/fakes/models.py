"""Stand-ins for the model deployments in the router tests: the apps they serve (echo, chat,
transcription, image), the router config over them, and FakeModel, which answers like the real
models (progress events, tokens, PNGs in the artifact store, a transcript) on whichever event bus it
is given: Redis (router_harness.py's Postgres + Redis router) or the in-memory bus (memory_router.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from gpu_orchestrator.bus.events import AsyncEventBus

ECHO_APP = {"id": "echo", "deployment": "echo", "timeout_s": 60, "max_attempts": 2, "parameters": [
    {"name": "message", "type": "string", "default": "hello"},
    {"name": "delay_s", "type": "number", "minimum": 0, "maximum": 600, "default": 0},
    {"name": "steps", "type": "integer", "minimum": 1, "maximum": 1000, "default": 1},
    {"name": "seed", "type": "integer"},
]}
CHAT_APP = {"id": "chat", "deployment": "llm", "task": "chat", "timeout_s": 60, "parameters": [
    {"name": "messages", "type": "messages", "required": True},
    {"name": "max_tokens", "type": "integer", "minimum": 1, "maximum": 4096, "default": 8},
    {"name": "min_tokens", "type": "integer", "minimum": 0, "default": 0},
    {"name": "temperature", "type": "number", "minimum": 0, "maximum": 2, "default": 0.7},
    {"name": "seed", "type": "integer"},
]}
AUDIO_APP = {"id": "transcribe", "deployment": "echo", "task": "transcription", "aliases": ["whisper-1"], "parameters": [
    {"name": "audio", "type": "file", "required": True, "accept": [".wav", ".mp3"]},
    {"name": "language", "type": "string", "max_length": 16},
    {"name": "task", "type": "enum", "choices": ["transcribe", "translate"], "default": "transcribe"},
]}
IMAGE_APP = {"id": "image", "deployment": "echo", "task": "image", "aliases": ["dall-e-3"], "parameters": [
    {"name": "prompt", "type": "string", "required": True, "max_length": 2000},
    {"name": "width", "type": "integer", "minimum": 64, "maximum": 2048, "multiple_of": 8, "default": 64},
    {"name": "height", "type": "integer", "minimum": 64, "maximum": 2048, "multiple_of": 8, "default": 64},
    {"name": "num_images", "type": "integer", "minimum": 1, "maximum": 4, "default": 1},
    {"name": "seed", "type": "integer"},
]}
# What the stand-in transcription model hears in any audio.
SEGMENTS = [{"id": 0, "start": 0.0, "end": 1.5, "text": " hello"}, {"id": 1, "start": 1.5, "end": 3.25, "text": " world"}]


def config(**router: Any) -> dict[str, Any]:
    return {
        "apps": [ECHO_APP, CHAT_APP, AUDIO_APP, IMAGE_APP,
                 {"id": "cloud", "kind": "replicate", "cloud": {"backend": "replicate", "model": "stability-ai/sdxl"}}],
        "models": {"echo": {"impl": "deployments.echo:Echo"}, "llm": {"impl": "deployments.llm:LLM"}},
        # No token: the cloud-only app is refused at submit, naming why.
        "cloud": {"replicate": {"token_env": "GPU_ORCH_TEST_UNSET_TOKEN"}},
        "router": {"lease_s": 3, "poll_interval_s": 0.1, "auth": "off", **router},
    }


class FakeModel:
    """Stands in for a model deployment handle: `run.remote(job_id, params, attempt)` returns an
    awaitable, cancellable response (an asyncio Task), like a DeploymentResponse. Echo: sleeps
    delay_s per step, publishing progress. Chat: one token event per token, delay_s apart."""

    def __init__(self, redis_url: str | None = None, bus: Any = None):
        self.redis_url = redis_url
        self.calls: list[str] = []
        self.cancelled: list[str] = []
        self.run = SimpleNamespace(remote=self._remote)
        self.artifacts_url: str | None = None  # where an image app's PNGs go (the router's store)
        self._bus: Any = bus  # an event bus given, else one on redis_url made on first use

    def _remote(self, job_id: str, params: dict, attempt: int, **_: Any) -> asyncio.Task:
        self.calls.append(job_id)
        task = asyncio.get_running_loop().create_task(self._run(job_id, params))
        # A callback, not an except clause: a task cancelled before its first step never runs its body.
        task.add_done_callback(lambda t: t.cancelled() and self.cancelled.append(job_id))
        return task

    async def _publish(self, job_id: str, **data: Any) -> None:
        if self._bus is None and self.redis_url is not None:
            self._bus = AsyncEventBus(self.redis_url)
        try:  # progress is lossy, as in models/base.py
            await self._bus.publish(job_id, "progress", **data)
        except Exception:
            pass

    async def _run(self, job_id: str, params: dict) -> dict:
        delay = float(params.get("delay_s", 0.05 if "messages" in params else 0))
        if "messages" in params:
            n = max(params.get("min_tokens", 0), min(params.get("max_tokens", 8), 8))
            text = ""
            for i in range(n):
                await asyncio.sleep(delay)
                tok = f"t{i} "
                text += tok
                await self._publish(job_id, token=tok, index=i)
            return {"text": text, "finish_reason": "length", "completion_tokens": n, "prompt_tokens": 3}
        if "prompt" in params:  # an image app: PNGs in the artifact store, as models/diffusion.py
            return await asyncio.to_thread(self._images, params)
        if "audio" in params:  # a transcription app: models/whisper.py's result
            return {"echo": params, "text": "".join(s["text"] for s in SEGMENTS), "segments": SEGMENTS,
                    "language": params.get("language") or "en", "audio_s": 3.25}
        for step in range(1, params.get("steps", 1) + 1):
            await asyncio.sleep(delay)
            await self._publish(job_id, step=step)
        return {"echo": params}


    def _images(self, params: dict) -> dict:
        import io

        from PIL import Image

        from gpu_orchestrator.store.artifacts import ArtifactStore, http_path

        images = []
        for n in range(params.get("num_images", 1)):
            buf = io.BytesIO()
            Image.new("RGB", (params["width"], params["height"]), (n * 60, 100, 200)).save(buf, format="PNG")
            uri = ArtifactStore(self.artifacts_url).put(buf.getvalue(), name=f"image-{n}.png", prefix="image")
            images.append({"artifact": uri, "url": http_path(uri), "width": params["width"], "height": params["height"]})
        return {"images": images, "seed": params.get("seed", 0)}


class AsModelObject:
    """A FakeModel as a model object for service/backends.py's InProcessBackend: its handle's
    `run.remote(job_id, params, attempt)` as `run(...)` (the in-memory build has no handles)."""

    def __init__(self, fake: FakeModel):
        self.fake = fake

    def run(self, job_id: str, params: dict, attempt: int, **_: Any) -> asyncio.Task:
        return self.fake._remote(job_id, params, attempt)
