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


def _done(c, app_id: str, message: str) -> dict:
    job = wait_status(c, c.post("/v1/jobs", json={"app_id": app_id, "params": {"message": message}}).json()["job_id"],
                      {"succeeded", "failed"}, timeout_s=120)
    assert job["status"] == "succeeded", job
    return job["result"]


def test_the_arbiter_parks_an_evicted_model_and_its_next_job_wakes_the_same_replica(warm_url):
    """Two models that cannot share the GPU's 4 GB, with the warm tier on: the one evicted parks
    (its Serve replica stays, holding no VRAM), and its next job runs on the same process, woken
    from host memory, not started and loaded again."""
    import httpx

    with httpx.Client(base_url=warm_url, timeout=30) as c:
        pid_a = _done(c, "a", "cold")["replica_pid"]
        # A model parks only where the leader knows its node's memory: from its replica's heartbeat.
        wait_for(lambda: any(r.get("host_total_gb") for r in _model(c, "warm-a")["replicas"]), timeout_s=30,
                 what="warm-a's heartbeat with its node's memory")
        _done(c, "b", "evicts a")  # warm-b (2.4 GB) needs the room warm-a (2.6 GB) holds

        def parked(name: str) -> dict | None:
            m = _model(c, name)
            return m if m["state"] == "warm" else None

        a = wait_for(lambda: parked("warm-a"), timeout_s=30, what="warm-a parked")
        assert a["replica_states"] == {"RUNNING": 1} and a["host_held_gb"] == 2.6  # Serve kept its replica
        assert _done(c, "a", "warm")["replica_pid"] == pid_a  # the same process, woken
        wait_for(lambda: parked("warm-b"), timeout_s=30, what="warm-b parked for warm-a")
        # The leader times the wake by the replica's answer, which may come just after the job's.
        data = wait_for(lambda: (lambda d: d if any("warm-a woke from host memory" in t for _, t in d["arbiter"]["history"])
                                 else None)(c.get("/v1/workers").json()), timeout_s=10, what="warm-a's wake recorded")
        arb = {m["deployment"]: m["arbiter"] for m in data["models"]}["warm-a"]
        # Both load times learned apart: the wake (0.1 s in the model) well under the cold start
        # (0.5 s in the model, after Serve started the replica's process).
        assert arb["warm_load_measured_s"] < 1.0 < arb["load_measured_s"], arb
        (host,) = data["arbiter"]["hosts"].values()
        assert host["budget_gb"] == 40 and host["held_gb"] == 2.4  # warm-b's copy, now warm-a is back
