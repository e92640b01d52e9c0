"""Cloud routing on the deployed stack (Ray Serve, demo profile, the arbiter app with its fake
GPU), the cloud being the session's loopback Replicate: a model no GPU can hold runs on its
fallback; a busy local model sends NEW jobs to the cloud while the ones already queued stay
local; a cloud-only app never reaches a local deployment; without a fallback, as before."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.ray_session import wait_status

pytestmark = [pytest.mark.serve, pytest.mark.timeout(300)]


def submit(c: httpx.Client, app: str, **params) -> dict:
    r = c.post("/v1/jobs", json={"app_id": app, "params": params})
    assert r.status_code == 202, r.text
    return r.json()


def test_a_model_larger_than_every_gpu_runs_on_its_fallback(arbiter_url, fake_replicate):
    fake = fake_replicate["fake"]
    reason = "no local GPU can hold the model (cannot place echo-huge: needs 30 GB, largest allowed GPU has 24 GB)"
    with httpx.Client(base_url=arbiter_url, timeout=30) as arb:
        # The arbiter gives a job max_wait_s (30 s) to find room; then the queued job moves to the fallback.
        first = submit(arb, "huge-fb", delay_s=0)
        job = wait_status(arb, first["job_id"], {"succeeded", "failed"}, timeout_s=120)
        assert job["status"] == "succeeded", job
        assert job["route"] == "replicate" and job["route_reason"] == reason
        assert job["backend"] == "replicate:test/echo" and job["result"] == {"echo": {"delay_s": 0, "steps": 1}}
        assert job["cost"]["gpu_seconds"] == 0.5 and job["attempts"] == 1
        # Now known unplaceable: a new job goes to the cloud at submit.
        second = submit(arb, "huge-fb", delay_s=0)
        assert second["route"] == "replicate" and second["route_reason"] == reason
        assert wait_status(arb, second["job_id"], {"succeeded", "failed"})["status"] == "succeeded"
        assert sum(1 for c in fake.creates if c["input"] == {"delay_s": 0, "steps": 1}) >= 2
        models = {m["deployment"]: m for m in arb.get("/v1/workers").json()["models"]}
        assert models["echo-huge"]["replica_states"] in ({}, {"RUNNING": 0})  # never loaded


def test_busy_local_model_sends_new_jobs_to_the_cloud_and_queued_ones_stay(http):
    # One slot, 3 s per job: a burst sent at once lands before the router has seen a queue (its
    # stats refresh every second), so one job runs and the others queue locally. On a loaded machine
    # a refresh can fall inside the burst and send part of it to the cloud: then the burst is
    # drained and sent again, until at least two of its jobs are local.
    for _ in range(4):
        with ThreadPoolExecutor(4) as pool:
            first = list(pool.map(lambda i: submit(http, "echo-busy", delay_s=3, message=f"m{i}"), range(4)))
        local = [j for j in first if j["route"] == "local"]
        if len(local) >= 2:
            break
        for j in first:
            wait_status(http, j["job_id"], {"succeeded", "failed"}, timeout_s=120)
    assert len(local) >= 2, first
    time.sleep(2.0)  # both router replicas have seen one running, the rest queued
    later = submit(http, "echo-busy", delay_s=3, message="later")
    assert later["route"] == "replicate", later
    assert later["route_reason"].startswith("estimated local wait ") and "> max_local_wait_s 1 s" in later["route_reason"]
    job = wait_status(http, later["job_id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded" and job["backend"] == "replicate:test/echo", job
    for j in local:  # queued ones never moved
        done = wait_status(http, j["job_id"], {"succeeded", "failed"}, timeout_s=120)
        assert done["status"] == "succeeded" and done["backend"] == "local:echo" and done["route"] == "local", done


def test_cloud_only_app_never_touches_local_deployments(http, fake_replicate):
    fake = fake_replicate["fake"]
    accepted = submit(http, "echo-cloud", message="up there")
    assert accepted["route"] == "replicate" and accepted["route_reason"] == "cloud-only app"
    job = wait_status(http, accepted["job_id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded" and job["result"]["echo"]["message"] == "up there"
    events = http.get(f"/v1/jobs/{job['job_id']}/events").text
    assert "replicate: processing" in events or "replicate: starting" in events  # the provider's own words
    assert '"step"' not in events  # no local replica published progress for it
    assert any(c["input"].get("message") == "up there" for c in fake.creates)
    cloud = {c["backend"]: c for c in http.get("/v1/workers").json()["cloud"]}
    assert cloud["replicate"]["available"] is True and cloud["replicate"]["apps"] == ["echo-cloud"]
    assert set(cloud["replicate"]["fallback_for"]) == {"echo-busy", "transcribe-broken-fb"}


def test_a_model_failing_to_load_sends_its_jobs_to_the_fallback(http, tmp_path):
    from tests.serve.test_whisper import tone_wav

    wav = tmp_path / "tone.wav"
    wav.write_bytes(tone_wav(1.0))
    uri = http.post("/v1/artifacts", files={"file": ("tone.wav", wav.read_bytes(), "audio/wav")}).json()["artifact"]
    deadline = time.monotonic() + 120  # until the broken replica has reported its load error
    while True:
        models = {m["deployment"]: m for m in http.get("/v1/workers").json()["models"]}
        if models["whisper-broken"]["state"] == "failed" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert models["whisper-broken"]["state"] == "failed", models["whisper-broken"]
    time.sleep(2.5)  # the routers read heartbeats every 2 s
    accepted = submit(http, "transcribe-broken-fb", audio=uri)
    assert accepted["route"] == "replicate", accepted
    assert accepted["route_reason"].startswith("the local model fails to load (whisper failed to load: ")
    job = wait_status(http, accepted["job_id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded", job
    assert job["result"]["echo"]["audio"].startswith("data:audio/")  # the file went along as a data URI
