"""The sdxl and zimage deployments (tiny untrained diffusers pipelines, loaded with from_pretrained
in their own runtime_env) through the router: PNGs of the requested size in the artifact store,
one progress event per denoising step, 4xx for bad sizes and steps, cancel between steps."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from tests.helpers import read_sse, wait_replicas_idle, wait_status

pytestmark = pytest.mark.serve


@pytest.mark.parametrize("app_id,width,height", [("sdxl", 64, 96), ("zimage", 96, 64)])
def test_image_job_gives_pngs_of_the_requested_size(orchestrator, http, app_id, width, height):
    params = {"prompt": "a red fox in the snow", "negative_prompt": "blurry", "width": width, "height": height,
              "num_inference_steps": 3, "num_images": 2, "seed": 7}
    r = http.post("/v1/jobs", json={"app_id": app_id, "params": params})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    events = read_sse(orchestrator, job_id, timeout_s=600)
    assert events[-1]["data"]["status"] == "succeeded", events[-1]
    steps = [e["data"]["step"] for e in events if e["event"] == "progress" and "step" in e["data"]]
    assert steps == [1, 2, 3]
    job = wait_status(http, job_id, {"succeeded"})
    res = job["result"]
    assert res["seed"] == 7 and res["steps"] == 3 and res["untrained"] is True and "UNTRAINED" in res["note"]
    assert len(res["images"]) == 2
    for img in res["images"]:
        assert img["artifact"].startswith(f"artifact://{app_id}/") and (img["width"], img["height"]) == (width, height)
        got = http.get(img["url"])
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        png = Image.open(io.BytesIO(got.content))
        png.load()
        assert png.format == "PNG" and png.size == (width, height) and png.mode == "RGB"
        assert "UNTRAINED" in png.text["Comment"] and png.text["Seed"] == "7"


def test_same_seed_same_image(http):
    params = {"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 123}
    urls = []
    for _ in range(2):
        r = http.post("/v1/jobs", json={"app_id": "sdxl", "params": params})
        job = wait_status(http, r.json()["job_id"], {"succeeded", "failed"}, timeout_s=300)
        assert job["status"] == "succeeded", job
        urls.append(job["result"]["images"][0]["url"])
    a, b = (Image.open(io.BytesIO(http.get(u).content)).tobytes() for u in urls)
    assert urls[0] != urls[1] and a == b


@pytest.mark.parametrize("app_id,params,field", [
    ("sdxl", {"width": 1004}, "params.width"),            # not a multiple of 8
    ("zimage", {"width": 1000}, "params.width"),          # a multiple of 8 but not of 16 (Z-Image's patch grid)
    ("sdxl", {"height": 4096}, "params.height"),          # over the bound
    ("sdxl", {"num_inference_steps": 0}, "params.num_inference_steps"),
    ("zimage", {"num_inference_steps": 0}, "params.num_inference_steps"),
    ("sdxl", {"num_images": 9}, "params.num_images"),
    ("zimage", {"guidance_scale": -1}, "params.guidance_scale"),
])
def test_invalid_image_params_are_4xx_naming_the_field(http, app_id, params, field):
    r = http.post("/v1/jobs", json={"app_id": app_id, "params": {"prompt": "x", **params}})
    assert r.status_code == 422, r.text
    body = r.json()
    assert field in body["message"] and any(f["field"] == field for f in body["fields"])


def test_missing_prompt_is_4xx(http):
    r = http.post("/v1/jobs", json={"app_id": "sdxl", "params": {"width": 64}})
    assert r.status_code == 422 and "params.prompt" in r.json()["message"]


def test_cancel_stops_the_diffusion_between_steps(orchestrator, http):
    params = {"prompt": "slow", "width": 512, "height": 512, "num_inference_steps": 150, "seed": 1}
    job_id = http.post("/v1/jobs", json={"app_id": "sdxl", "params": params}).json()["job_id"]
    read_sse(orchestrator, job_id, until=lambda e: e["data"].get("step") == 2, timeout_s=300)
    assert http.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    # The pipeline's thread stopped between steps: the replica (one job at a time) frees its slot only then.
    wait_replicas_idle(http, "sdxl", since=time.time())
    events = read_sse(orchestrator, job_id, timeout_s=30)
    steps = [e["data"]["step"] for e in events if e["event"] == "progress" and "step" in e["data"]]
    assert 2 <= steps[-1] < 150 and events[-1]["data"]["status"] == "cancelled"


def test_image_workers_report_state_and_load_time(http):
    models = {m["deployment"]: m for m in http.get("/v1/workers").json()["models"]}
    for name in ("sdxl", "zimage"):
        m = models[name]
        assert m["state"] not in ("failed",) and m["load_time_s"] > 0 and m["load_error"] is None, m
        assert m["replicas"] and m["replicas"][0]["state"] in ("resident", "busy")


def test_concurrent_jobs_on_one_replica_run_one_at_a_time(http):
    # A diffusers pipeline keeps its scheduler's state on the loaded object: two jobs sharing it at
    # once would corrupt each other. Same seed and params, so the images must come out identical.
    params = {"prompt": "twins", "width": 128, "height": 128, "num_inference_steps": 12, "seed": 99}
    ids = [http.post("/v1/jobs", json={"app_id": "zimage", "params": params}).json()["job_id"] for _ in range(2)]
    jobs = [wait_status(http, i, {"succeeded", "failed"}, timeout_s=300) for i in ids]
    assert all(j["status"] == "succeeded" for j in jobs), [j.get("error") for j in jobs]
    a, b = (Image.open(io.BytesIO(http.get(j["result"]["images"][0]["url"]).content)).tobytes() for j in jobs)
    assert a == b


def test_the_openai_client_generates_with_the_real_model(orchestrator, http):
    import base64

    import openai

    c = openai.OpenAI(base_url=orchestrator + "/v1", api_key="anonymous", max_retries=0)
    r = c.images.generate(model="zimage", prompt="a lighthouse", size="64x96", response_format="b64_json",
                          extra_body={"num_inference_steps": 2, "seed": 5})
    (img,) = r.data
    png = Image.open(io.BytesIO(base64.b64decode(img.b64_json)))
    assert png.format == "PNG" and png.size == (64, 96) and png.text["Seed"] == "5"
    with pytest.raises(openai.BadRequestError) as e:  # zimage's sizes are multiples of 16
        c.images.generate(model="zimage", prompt="x", size="72x64")
    assert e.value.param == "size" and "16" in e.value.message
