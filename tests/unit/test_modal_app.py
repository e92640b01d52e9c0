"""cloud/modal_app.py imports offline (no network, no Modal credentials), registers one class per
model with the method the router's config names and the GPU its docstring says, and its shared body
runs our model code: the job's files go in, the result's files come back inline."""

from __future__ import annotations

import base64
import importlib.util
import io
import warnings
from pathlib import Path

import pytest

from gpu_orchestrator.artifacts import ArtifactStore
from gpu_orchestrator.models.echo import Echo
from gpu_orchestrator.service.cloud_payload import pack_inputs, store_inlined

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def modal_app():
    spec = importlib.util.spec_from_file_location("modal_app", ROOT / "cloud" / "modal_app.py")
    mod = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec.loader.exec_module(mod)
    return mod


def test_imports_offline_with_a_class_per_model(modal_app):
    assert modal_app.app.name == "gpu-orchestrator"
    expected = {"SDXL": ("generate", "L40S"), "ZImage": ("generate", "L40S"), "Whisper": ("transcribe", "L4"),
                "LLM": ("chat", "A100-80GB")}
    for name, (method, gpu) in expected.items():
        cls = getattr(modal_app, name)
        assert set(cls._get_method_names()) == {method, "web"}  # the SDK method and the endpoint
        assert "load" in cls._get_partial_functions()  # @modal.enter
        assert cls._get_class_service_function()._spec_.gpus == gpu
        assert f"{name} " in modal_app.__doc__ and f"| {method} " in modal_app.__doc__ and gpu in modal_app.__doc__
    # The classes are the local deployments' classes, with the real profile's init.
    assert modal_app.MODELS["SDXL"]["impl"] == "gpu_orchestrator.models.sdxl:SDXL"
    assert modal_app.MODELS["SDXL"]["init"]["model"] == "stabilityai/stable-diffusion-xl-base-1.0"


def test_run_model_runs_our_model_code(modal_app, tmp_path):
    model = Echo(load_time_s=0.0)
    out = modal_app.run_model(model, {"message": "hi", "delay_s": 0, "steps": 2}, {}, artifacts=str(tmp_path))
    assert out["echo"]["message"] == "hi"  # what the local echo deployment returns


class ImageModel:
    """A model whose result carries an artifact, as the diffusion models' do, and that reads an input file."""

    def __init__(self, artifacts: str):
        self.store = ArtifactStore(artifacts)

    async def run(self, job_id, params, attempt, timeout_s=None):
        from PIL import Image

        seen = self.store.read(params["audio"])
        buf = io.BytesIO()
        Image.new("RGB", (24, 16)).save(buf, format="PNG")
        uri = self.store.put(buf.getvalue(), name="image-0.png", prefix="sdxl")
        return {"images": [{"artifact": uri, "url": "/v1/artifacts/x", "width": 24, "height": 16}], "got": seen.decode()}


def test_files_go_in_and_come_back_inline_into_the_routers_store(modal_app, tmp_path):
    router = ArtifactStore(tmp_path / "router")
    uri = router.put(b"RIFF-bytes", name="a.wav")
    params, files = pack_inputs({"audio": uri}, ["audio"], router)
    assert files["audio"]["name"] == "a.wav" and base64.b64decode(files["audio"]["data_b64"]) == b"RIFF-bytes"
    worker = str(tmp_path / "worker")
    out = modal_app.run_model(ImageModel(worker), params, files, artifacts=worker)
    assert out["got"] == "RIFF-bytes"  # the worker read the job's file from its own store
    img = out["images"][0]
    assert "artifact" not in img and img["inline"]["name"] == "image-0.png" and img["width"] == 24
    back = store_inlined(out, router, prefix="cloud-sdxl")["images"][0]
    assert back["artifact"].startswith("artifact://cloud-sdxl/") and back["url"].startswith("/v1/artifacts/")
    assert router.read(back["artifact"])[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"result\.images\[0\]: data_b64 is not base64"):
        store_inlined({"images": [{"inline": {"name": "x.png", "data_b64": "***"}}]}, router, prefix="p")
