"""The warm tier on the real models (diffusers, openai-whisper, transformers loading paths, tiny
untrained weights in their runtime_envs): a replica parked through its Serve handle shows as warm
in /v1/workers with the host memory it holds, and the next job, which wakes it, gives exactly the
output the same job gave before the park."""

from __future__ import annotations

import pytest

from tests.helpers import wait_for, wait_status
from tests.ray_session import APP_NAME
from tests.serve.test_whisper import tone_wav

pytestmark = pytest.mark.serve


def _output(http, app_id: str, params: dict) -> object:
    job = wait_status(http, http.post("/v1/jobs", json={"app_id": app_id, "params": params}).json()["job_id"],
                      {"succeeded", "failed"}, timeout_s=300)
    assert job["status"] == "succeeded", job
    res = job["result"]
    if "images" in res:  # the pixels, not the artifact's name (new per job)
        return [http.get(i["url"]).content for i in res["images"]]
    return res["text"]


def _model(http, name: str) -> dict:
    return {m["deployment"]: m for m in http.get("/v1/workers").json()["models"]}[name]


@pytest.mark.parametrize("deployment, app_id, params", [
    ("sdxl", "sdxl", {"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 5}),
    ("llm", "chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 1.0, "seed": 3}),
    ("whisper", "transcribe", None),
])
def test_a_parked_model_is_warm_and_its_next_job_gives_the_same_output(deployed, http, deployment, app_id, params):
    from ray import serve

    if params is None:
        art = http.post("/v1/artifacts", files={"file": ("tone.wav", tone_wav(), "audio/wav")}).json()
        params = {"audio": art["artifact"], "language": "en"}
    before = _output(http, app_id, params)
    handle = serve.get_deployment_handle(deployment, app_name=APP_NAME)
    parked = handle.park.remote().result(timeout_s=120)
    assert parked["parked"] and parked["state"] == "warm" and parked["host_gb"] > 0, parked
    warm = wait_for(lambda: (m := _model(http, deployment))["state"] == "warm" and m, f"{deployment} warm in /v1/workers", 30)
    assert warm["host_held_gb"] == pytest.approx(parked["host_gb"])
    assert _output(http, app_id, params) == before  # the job woke it
    woke = wait_for(lambda: (m := _model(http, deployment))["state"] == "resident" and m, f"{deployment} resident again", 30)
    assert woke["host_held_gb"] == 0.0 and woke["replicas"][0]["wake_time_s"] is not None
    assert woke["replicas"][0]["load_time_s"] == warm["replicas"][0]["load_time_s"]  # woken, not loaded again
