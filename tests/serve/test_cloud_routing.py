"""Cloud routing on the deployed stack (Ray Serve, demo profile), the cloud being the session's
loopback Replicate: a busy local model sends NEW jobs to the cloud while the ones already queued
stay local; a cloud-only app never reaches a local deployment; without a fallback, as before. (A
model no GPU can hold runs on its fallback: tests/serve/test_arbiter.py, beside the job of the same
model without one, as both wait out max_wait_s.)"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.helpers import wait_status

pytestmark = [pytest.mark.serve, pytest.mark.timeout(300)]


def submit(c: httpx.Client, app: str, **params) -> dict:
    r = c.post("/v1/jobs", json={"app_id": app, "params": params})
    assert r.status_code == 202, r.text
    return r.json()


def test_busy_local_model_sends_new_jobs_to_the_cloud_and_queued_ones_stay(http):
    # One slot, 4 s declared per job, max_local_wait_s 6: a job with nothing ahead runs, one with a
    # job ahead waits one wave (4 s) and stays local, one with two ahead (8 s) goes to the cloud.
    # Each submit reads the app's queue as it is (whichever router replica takes it), and the first
    # job runs until the test cancels it, so nothing here depends on how fast the machine is.
    running = submit(http, "echo-busy", delay_s=120, message="first")
    queued = submit(http, "echo-busy", delay_s=0.2, message="second")
    assert running["route"] == "local" and queued["route"] == "local", (running, queued)
    later = submit(http, "echo-busy", delay_s=0.2, message="later")
    assert later["route"] == "replicate", later
    assert later["route_reason"] == "estimated local wait 8 s > max_local_wait_s 6 s", later
    job = wait_status(http, later["job_id"])
    assert job["status"] == "succeeded" and job["backend"] == "replicate:test/echo", job
    # The queued job never moved: it still waits for the local slot, and runs there once it frees.
    still = http.get(f"/v1/jobs/{queued['job_id']}").json()
    assert still["status"] == "queued" and still["route"] == "local", still
    assert http.delete(f"/v1/jobs/{running['job_id']}").json()["status"] == "cancelled"
    done = wait_status(http, queued["job_id"])
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
    # A router replica that has not read the replicas' heartbeats since (every 2 s) queues the job
    # locally; its dispatcher moves it to the fallback once it has: either way it runs there.
    accepted = submit(http, "transcribe-broken-fb", audio=uri)
    job = wait_status(http, accepted["job_id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded" and job["route"] == "replicate", job
    assert job["route_reason"].startswith("the local model fails to load (whisper failed to load: "), job
    assert job["result"]["echo"]["audio"].startswith("data:audio/")  # the file went along as a data URI
