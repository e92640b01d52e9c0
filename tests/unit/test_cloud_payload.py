"""Files to and from a cloud worker that cannot read our artifact store: inline base64 both ways,
each side writing into its own store."""

from __future__ import annotations

import base64
import io

import pytest

from gpu_orchestrator.store.artifacts import ArtifactStore
from gpu_orchestrator.service.cloud.payload import inline_artifacts, pack_inputs, store_inlined, unpack_inputs


@pytest.fixture
def router(tmp_path):
    return ArtifactStore(tmp_path / "router")


@pytest.fixture
def worker(tmp_path):
    return ArtifactStore(tmp_path / "worker")


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 4), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_an_audio_input_crosses_to_the_workers_store(router, worker):
    audio = b"RIFF\x00\x01fake-wav" * 100
    uri = router.put(audio, name="speech.wav")
    params = {"audio": uri, "language": "en", "task": "transcribe"}
    same, files = pack_inputs(params, ["audio", "missing"], router)
    assert same == params  # params go as they are
    assert set(files) == {"audio"}  # only the file params present
    assert files["audio"]["name"] == "speech.wav" and base64.b64decode(files["audio"]["data_b64"]) == audio

    out = unpack_inputs(same, files, worker)
    assert out["language"] == "en" and out["task"] == "transcribe"
    assert out["audio"] != uri and out["audio"].startswith("artifact://uploads/") and out["audio"].endswith("/speech.wav")
    assert worker.read(out["audio"]) == audio
    assert params["audio"] == uri  # the caller's dict is not changed


def test_unpack_makes_names_safe_and_rejects_bad_files(worker):
    out = unpack_inputs({}, {"audio": {"name": "../../etc/pass wd.wav", "data_b64": base64.b64encode(b"x").decode()}},
                        worker)
    assert out["audio"].endswith("/pass_wd.wav") and worker.read(out["audio"]) == b"x"
    with pytest.raises(ValueError, match=r"files\.audio: data_b64 is not base64"):
        unpack_inputs({}, {"audio": {"name": "a.wav", "data_b64": "not base64!"}}, worker)
    with pytest.raises(ValueError, match=r"files\.audio"):
        unpack_inputs({}, {"audio": "a string"}, worker)


def test_an_image_result_round_trips_into_the_routers_store(router, worker):
    png = _png()
    uri = worker.put(png, name="image-0.png", prefix="sdxl")
    result = {"images": [{"artifact": uri, "url": "/v1/artifacts/x", "width": 8, "height": 4}], "seed": 7,
              "model": "stabilityai/stable-diffusion-xl-base-1.0"}

    wire = inline_artifacts(result, worker)
    img = wire["images"][0]
    assert set(img) == {"inline", "width", "height"}  # no worker URI or path leaves the worker
    assert img["inline"]["name"] == "image-0.png" and base64.b64decode(img["inline"]["data_b64"]) == png
    assert wire["seed"] == 7 and result["images"][0]["artifact"] == uri  # the input is not changed

    back = store_inlined(wire, router, prefix="cloud-sdxl")
    img = back["images"][0]
    assert img["artifact"].startswith("artifact://cloud-sdxl/") and img["artifact"].endswith("/image-0.png")
    assert img["url"] == "/v1/artifacts/" + img["artifact"][len("artifact://"):]
    assert (img["width"], img["height"]) == (8, 4) and "inline" not in img
    assert router.read(img["artifact"]) == png
    assert back["seed"] == 7


def test_store_inlined_validates(router):
    with pytest.raises(ValueError, match=r"result\.images\[1\]: data_b64 is not base64"):
        store_inlined({"images": [{"inline": {"name": "a.png", "data_b64": base64.b64encode(b"ok").decode()}},
                                  {"inline": {"name": "b.png", "data_b64": "%%%"}}]}, router, prefix="p")
    with pytest.raises(ValueError, match=r"result\.file: data_b64 is not base64"):
        store_inlined({"file": {"inline": {"name": "a.png"}}}, router, prefix="p")
    with pytest.raises(ValueError, match="no artifact store"):
        store_inlined({"file": {"inline": {"name": "a.png", "data_b64": ""}}}, None, prefix="p")
    # Names are made safe; a worker's own "artifact"/"url" next to "inline" do not survive.
    out = store_inlined({"inline": {"name": "../x/<evil>.png", "data_b64": base64.b64encode(b"z").decode()},
                         "artifact": "artifact://uploads/someone-else/secret.wav", "url": "/elsewhere"},
                        router, prefix="cloud-a")
    assert out["artifact"].startswith("artifact://cloud-a/") and out["artifact"].endswith("/evil_.png")
    assert out["url"].startswith("/v1/artifacts/cloud-a/") and router.read(out["artifact"]) == b"z"


def test_results_without_files_pass_through(router, worker):
    result = {"text": "hello", "segments": [{"id": 0, "start": 0.0, "end": 1.0, "text": "hello"}], "n": [1, 2]}
    assert inline_artifacts(result, worker) == result
    assert store_inlined(result, router, prefix="p") == result
    assert store_inlined("plain", None, prefix="p") == "plain"
