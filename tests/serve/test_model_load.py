"""A model whose load fails: its jobs fail at once with the load error (not retried, not left to
time out), and /v1/workers says why."""

from __future__ import annotations

import time

import pytest

from tests.helpers import wait_status
from .test_whisper import tone_wav

pytestmark = pytest.mark.serve


def test_jobs_of_a_model_that_fails_to_load_fail_with_the_load_error(http):
    art = http.post("/v1/artifacts", files={"file": ("tone.wav", tone_wav(0.5), "audio/wav")}).json()
    t0 = time.monotonic()
    r = http.post("/v1/jobs", json={"app_id": "transcribe-broken", "params": {"audio": art["artifact"]}})
    assert r.status_code == 202, r.text
    job = wait_status(http, r.json()["job_id"], {"succeeded", "failed"}, timeout_s=300)
    assert job["status"] == "failed"
    assert "failed to load" in job["error"] and "/nonexistent/whisper-large.pt" in job["error"], job["error"]
    assert job["attempts"] == 1  # a load error is not retried (max_attempts is 3)
    assert time.monotonic() - t0 < 120  # the app's timeout is 1800 s: it did not wait that out
    models = {m["deployment"]: m for m in http.get("/v1/workers").json()["models"]}
    broken = models["whisper-broken"]
    assert broken["state"] == "failed" and "/nonexistent/whisper-large.pt" in broken["load_error"]
    assert models["whisper"]["state"] != "failed" and models["whisper"]["load_error"] is None
