"""The model deployment classes on a CUDA GPU (tiny untrained models, the real loading code): half
precision weights on the device, VRAM held reported, per-step progress and cancel, vLLM streaming
when vLLM is installed. Skipped cleanly without CUDA or without the models' libraries."""

from __future__ import annotations

import asyncio
import io

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from gpu_orchestrator.models.base import JobCancelled, JobContext  # noqa: E402


class Ctx(JobContext):
    """The job context without Redis: records progress, cancels after `cancel_after` steps."""

    def __init__(self, cancel_after: int | None = None):
        super().__init__(None, "job-1", 1)
        self.events: list[dict] = []
        self.cancel_after = cancel_after

    def progress(self, **data):
        self.events.append(data)

    def cancelled(self) -> bool:
        steps = sum(1 for e in self.events if "step" in e)
        return self.cancel_after is not None and steps >= self.cancel_after


def run(model, params, ctx):
    if asyncio.iscoroutinefunction(model.infer):
        return asyncio.run(model.infer(params, ctx))
    return model.infer(params, ctx)


@pytest.mark.parametrize("cls_path,dtype", [("deployments.sdxl:SDXL", "float16"), ("deployments.zimage:ZImage", "bfloat16")])
def test_diffusion_on_cuda(tmp_path, cls_path, dtype):
    pytest.importorskip("diffusers")
    from PIL import Image

    import importlib

    module, _, name = cls_path.partition(":")
    model = getattr(importlib.import_module(module), name)(demo=True, tiny_path=str(tmp_path / "model"), artifacts_url=str(tmp_path / "art"))
    assert model.state == "resident", model.load_error
    assert model.pipe.device.type == "cuda" and str(model.pipe.dtype) == f"torch.{dtype}"
    ctx = Ctx()
    res = run(model, {"prompt": "a fox", "width": 128, "height": 64, "num_inference_steps": 4, "seed": 3}, ctx)
    assert [e["step"] for e in ctx.events if "step" in e] == [1, 2, 3, 4]
    png = Image.open(io.BytesIO(model.artifacts.read(res["images"][0]["artifact"])))
    assert png.size == (128, 64)
    assert model.info()["vram_held_gb"] > 0
    with pytest.raises(JobCancelled):
        run(model, {"prompt": "a fox", "width": 64, "height": 64, "num_inference_steps": 20}, Ctx(cancel_after=2))


def test_whisper_on_cuda(tmp_path):
    pytest.importorskip("whisper")
    import numpy as np

    from gpu_orchestrator.models.whisper import Whisper
    from gpu_orchestrator.store.artifacts import ArtifactStore

    store = ArtifactStore(tmp_path / "art")
    sr = 16000
    t = np.arange(sr * 2) / sr
    pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr), w.writeframes(pcm.tobytes())
    uri = store.put(buf.getvalue(), name="tone.wav")
    model = Whisper(demo=True, tiny_path=str(tmp_path / "w"), artifacts_url=str(tmp_path / "art"))
    assert model.state == "resident", model.load_error
    res = run(model, {"audio": uri, "language": "en"}, Ctx())
    assert res["audio_s"] == pytest.approx(2.0, abs=0.01) and res["segments"] is not None
    assert model.info()["vram_held_gb"] > 0


@pytest.mark.parametrize("engine", ["transformers", "vllm"])
def test_llm_on_cuda_streams_tokens(tmp_path, engine):
    pytest.importorskip("transformers")
    if engine == "vllm":
        pytest.importorskip("vllm")
    from gpu_orchestrator.models.llm import LLM

    model = LLM(demo=True, tiny_path=str(tmp_path / "llm"), engine=engine, vram_gb=4)
    assert model.state == "resident", model.load_error
    ctx = Ctx()
    res = run(model, {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 16, "temperature": 0.8,
                      "seed": 1}, ctx)
    tokens = [e["token"] for e in ctx.events if "token" in e]
    assert res["engine"] == engine and "".join(tokens) == res["text"] and res["completion_tokens"] >= len(tokens)
    assert model.info()["vram_held_gb"] > 0  # vLLM: its share of the GPU, held by its engine process


@pytest.mark.parametrize("cls_path", ["deployments.sdxl:SDXL", "deployments.whisper_model:Whisper", "deployments.llm:LLM"])
def test_a_parked_model_gives_its_vram_back_and_wakes_to_the_same_output(tmp_path, cls_path):
    """The warm tier on a GPU: park() frees what the weights held on the device (as the driver
    sees it: mem_get_info), keeps them pinned in host memory, and the wake gives the same output."""
    import importlib

    module, _, name = cls_path.partition(":")
    pytest.importorskip({"SDXL": "diffusers", "Whisper": "whisper", "LLM": "transformers"}[name])
    kw = {"artifacts_url": str(tmp_path / "art")} if name != "LLM" else {"engine": "transformers"}
    model = getattr(importlib.import_module(module), name)(demo=True, tiny_path=str(tmp_path / "model"), **kw)
    assert model.state == "resident", model.load_error

    def output():
        if name == "SDXL":
            res = run(model, {"prompt": "a fox", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 3}, Ctx())
            return model.artifacts.read(res["images"][0]["artifact"])
        if name == "LLM":
            return run(model, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "seed": 1}, Ctx())["text"]
        return model.model.encoder.conv1.weight.detach().float().cpu().sum().item()

    before = output()
    torch.cuda.synchronize()
    free0 = torch.cuda.mem_get_info()[0]
    parked = asyncio.run(model.park())
    freed_gb = (torch.cuda.mem_get_info()[0] - free0) / 2**30
    assert parked["parked"] and freed_gb >= 0.8 * parked["host_gb"], (parked, freed_gb)
    asyncio.run(model.wake())
    assert model.state == "resident" and output() == before
