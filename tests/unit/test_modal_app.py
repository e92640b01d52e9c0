"""deploy/modal/modal_app.py imports offline (no network, no Modal credentials), registers one class per
model with the method the router's config names and the GPU its docstring says, builds our model
classes from serve_config.yaml's real profile, and its shared body runs our model code: the job's
files go in, the result's files come back inline."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import warnings
from pathlib import Path

import pytest

from gpu_orchestrator.store.artifacts import ArtifactStore
from gpu_orchestrator.core.model_errors import JobTimeout
from gpu_orchestrator.models.echo import Echo
from gpu_orchestrator.service.cloud.payload import pack_inputs, store_inlined

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {"SDXL": ("generate", "L40S"), "ZImage": ("generate", "L40S"), "Whisper": ("transcribe", "L4"),
            "LLM": ("chat", "A100-80GB")}


@pytest.fixture(scope="module")
def modal_app():
    # No credentials or config of a developer's: importing must not need them.
    saved = {k: os.environ.pop(k) for k in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "GPU_ORCH_SERVE_CONFIG")
             if k in os.environ}
    spec = importlib.util.spec_from_file_location("modal_app", ROOT / "deploy" / "modal" / "modal_app.py")
    mod = importlib.util.module_from_spec(spec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec.loader.exec_module(mod)
    finally:
        os.environ.update(saved)
    return mod


def _registered(app) -> set[str]:
    with warnings.catch_warnings():  # App.registered_classes: deprecated for modal 1.7
        warnings.simplefilter("ignore")
        return set(app.registered_classes)


def test_imports_offline_with_a_class_per_model(modal_app):
    assert modal_app.app.name == "gpu-orchestrator"
    assert _registered(modal_app.app) == set(EXPECTED)
    for name, (method, gpu) in EXPECTED.items():
        cls = getattr(modal_app, name)
        assert set(cls._get_method_names()) == {method, "web"}  # the SDK method and the endpoint
        assert "load" in cls._get_partial_functions()  # @modal.enter
        spec = cls._get_class_service_function()._spec_
        assert spec.gpus == gpu and modal_app.CLASSES[name][1:] == (method, gpu)
        assert "/cache" in spec.volumes  # the weights cache
        # The docstring's table says the same.
        assert f"| {name:<7} | {method:<12} | {gpu:<10} |" in modal_app.__doc__
        assert f"cls: {name}, method: {method}, gpu: {gpu}" in modal_app.__doc__


def test_the_models_are_serve_configs_real_profile(modal_app, tmp_path, monkeypatch):
    from gpu_orchestrator.core.config import parse_config
    import yaml

    monkeypatch.delenv("GPU_ORCH_SERVE_CONFIG", raising=False)

    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args = next(a["args"] for a in doc["applications"] if "models" in a.get("args", {}))
    cfg = parse_config(args)
    for name, (key, _, _) in modal_app.CLASSES.items():
        want = {"impl": cfg.models[key].impl, "init": dict(cfg.models[key].init)}
        assert modal_app.DEFAULT_MODELS[key] == want, f"DEFAULT_MODELS[{key!r}] is out of date with serve_config.yaml"
        assert modal_app.model_inits()[key] == want  # read from the file next to cloud/
        assert modal_app.model_inits(tmp_path / "absent.yaml")[key] == want  # the embedded copy
        assert "demo" not in want["init"]
    # Another file's models win; keys it lacks keep the defaults.
    other = tmp_path / "serve_config.yaml"
    other.write_text(yaml.safe_dump({"applications": [{"name": "orchestrator", "args": {
        "models": {"whisper": {"impl": "deployments.whisper_model:Whisper", "init": {"model": "medium"}}}}}]}))
    got = modal_app.model_inits(other)
    assert got["whisper"]["init"] == {"model": "medium"} and got["sdxl"] == modal_app.DEFAULT_MODELS["sdxl"]


def test_images_carry_each_models_runtime_env(modal_app):
    import yaml

    def pkgs(env: str) -> set[str]:
        return set(yaml.safe_load((ROOT / "runtime_envs" / env).read_text())["pip"]["packages"])

    assert pkgs("sdxl.yaml") <= set(modal_app.PACKAGES["diffusion"])
    assert pkgs("zimage.yaml") <= set(modal_app.PACKAGES["diffusion"])
    assert pkgs("whisper.yaml") <= set(modal_app.PACKAGES["whisper"])
    assert {p.split(">")[0] for p in pkgs("llm-vllm.yaml")} <= {p.split(">")[0] for p in modal_app.PACKAGES["llm"]}
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(d for d in deps if d.startswith("torch"))
    assert modal_app.TORCH == torch  # the image models run the torch the cluster runs
    assert modal_app.IMAGE_OF == {"SDXL": "diffusion", "ZImage": "diffusion", "Whisper": "whisper", "LLM": "llm"}


def test_build_model_passes_the_store_only_to_models_that_take_one(modal_app, tmp_path):
    # Echo has no artifacts_url (like the LLM): building it must not pass one.
    echo = modal_app.build_model("SDXL", str(tmp_path), spec={"impl": "deployments.echo:Echo", "init": {}})
    assert isinstance(echo, Echo) and echo.state == "resident"
    # The LLM's signature has no artifacts_url either (its init is used as is).
    from gpu_orchestrator.models.llm import LLM

    with pytest.raises(ValueError, match="set `model`"):  # got past the kwargs: no TypeError
        modal_app.build_model("LLM", str(tmp_path), spec={"impl": "deployments.llm:LLM", "init": {}})
    assert "artifacts_url" not in LLM.__init__.__code__.co_varnames


def test_run_model_runs_our_model_code(modal_app, tmp_path):
    model = Echo(load_time_s=0.0)
    out = modal_app.run_model(model, {"message": "hi", "delay_s": 0, "steps": 2}, {}, str(tmp_path))
    assert out["echo"] == {"message": "hi", "delay_s": 0, "steps": 2} and out["synthetic"] is True


class ImageModel:
    """A model whose result carries an artifact, as the diffusion models' do, and that reads an input file."""

    def __init__(self, artifacts: str):
        self.artifacts = ArtifactStore(artifacts)

    async def run(self, job_id, params, attempt, timeout_s=None):
        from PIL import Image

        assert job_id.startswith("modal-") and attempt == 1
        seen = self.artifacts.read(params["audio"])
        buf = io.BytesIO()
        Image.new("RGB", (24, 16)).save(buf, format="PNG")
        uri = self.artifacts.put(buf.getvalue(), name="image-0.png", prefix="sdxl")
        return {"images": [{"artifact": uri, "url": "/v1/artifacts/x", "width": 24, "height": 16}],
                "got": seen.decode(), "timeout_s": timeout_s}


def test_files_go_in_and_come_back_inline_into_the_routers_store(modal_app, tmp_path):
    router = ArtifactStore(tmp_path / "router")
    uri = router.put(b"RIFF-bytes", name="a.wav")
    params, files = pack_inputs({"audio": uri}, ["audio"], router)
    worker = tmp_path / "worker"
    model = ImageModel(str(worker))
    out = modal_app.run_model(model, params, files, timeout_s=12.5)  # the model's own store by default
    assert out["got"] == "RIFF-bytes" and out["timeout_s"] == 12.5  # the worker read the job's file
    img = out["images"][0]
    assert "artifact" not in img and "url" not in img and img["inline"]["name"] == "image-0.png"
    assert img["width"] == 24
    assert not [p for p in worker.rglob("*") if p.is_file()]  # the call's files are removed from the container
    back = store_inlined(out, router, prefix="cloud-sdxl")["images"][0]
    assert back["artifact"].startswith("artifact://cloud-sdxl/") and back["url"].startswith("/v1/artifacts/")
    assert router.read(back["artifact"])[:8] == b"\x89PNG\r\n\x1a\n"


class Failing:
    def __init__(self, exc: Exception):
        self.exc = exc

    async def run(self, job_id, params, attempt, timeout_s=None):
        raise self.exc


def test_errors_come_back_as_types_the_router_can_unpickle(modal_app, tmp_path):
    with pytest.raises(JobTimeout, match="timed out"):  # ours, as is
        modal_app.run_model(Failing(JobTimeout("timed out after 1 s")), {}, {}, str(tmp_path))

    class OutOfMemoryError(Exception):  # stands for torch's or vLLM's (the router has neither)
        pass

    with pytest.raises(RuntimeError, match=r"^OutOfMemoryError: CUDA out of memory$"):
        modal_app.run_model(Failing(OutOfMemoryError("CUDA out of memory")), {}, {}, str(tmp_path))


def _bound(modal_app, name: str, model) -> dict:
    """The class's methods bound to an instance, as a Modal container calls them."""
    from modal._partial_function import _find_callables_for_obj, _PartialFunctionFlags

    obj = getattr(modal_app, name)._get_user_cls()()
    obj.model = model
    return _find_callables_for_obj(obj, _PartialFunctionFlags.all())


def test_the_classes_methods_and_web_endpoint_run_the_model(modal_app, tmp_path):
    calls = _bound(modal_app, "LLM", Echo())
    assert set(calls) == {"load", "chat", "web"}
    out = asyncio.run(calls["chat"]({"message": "m"}, None))
    assert out["echo"] == {"message": "m"}

    from fastapi.testclient import TestClient
    from modal._runtime.asgi import magic_fastapi_app  # what Modal serves a fastapi_endpoint with

    with TestClient(magic_fastapi_app(calls["web"], "POST", False)) as c:
        r = c.post("/", json={"params": {"message": "w"}, "files": {}})
        assert r.status_code == 200 and r.json()["echo"] == {"message": "w"}
        r = c.post("/", json={"params": {"fail_message": "boom"}})
        assert r.status_code == 422 and r.json() == {"error": "RuntimeError: boom"}  # not a 5xx: no retry


def test_load_refuses_a_model_that_failed_to_load(modal_app, monkeypatch):
    class Broken:
        load_error = "sdxl failed to load: OSError: no such model"

    monkeypatch.setattr(modal_app, "build_model", lambda name: Broken())
    with pytest.raises(RuntimeError, match="no such model"):
        _bound(modal_app, "SDXL", None)["load"]()
