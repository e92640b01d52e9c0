"""The OpenAI-compatible route in-process with the official openai client: retries of one request
land on one job, a client that goes away cancels its job, and a non-stream wait ends before the
client's timeout."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.helpers import wait_status

from .router_harness import db_url, http, rr  # noqa: F401 (fixtures)

MSGS = [{"role": "user", "content": "hello"}]


def client(rr, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=rr.base + "/v1", api_key="unused", **kw)


def chat_jobs(http) -> list[dict]:
    return http.get("/v1/jobs", params={"app_id": "chat"}).json()["jobs"]



def test_same_idempotency_key_is_one_job(rr, http):
    c = client(rr)
    a = c.chat.completions.create(model="chat", messages=MSGS, max_tokens=4, extra_headers={"Idempotency-Key": "req-1"})
    b = c.chat.completions.create(model="chat", messages=MSGS, max_tokens=4, extra_headers={"Idempotency-Key": "req-1"})
    assert a.id == b.id and a.choices[0].message.content == "t0 t1 t2 t3 "
    assert len(chat_jobs(http)) == 1 and len(rr.model.calls) == 1
    with pytest.raises(openai.ConflictError):  # the same key for another request
        c.with_options(max_retries=0).chat.completions.create(model="chat", messages=MSGS, max_tokens=5,
                                                              extra_headers={"Idempotency-Key": "req-1"})


def test_sdk_retries_after_a_bounded_wait_rejoin_the_same_job(rr, http):
    # 12 s client timeout: the router answers "still running" (retryable) after 7 s, and the SDK's
    # retry (no Idempotency-Key; x-stainless-retry-count: 1) waits for the same job.
    c = client(rr, timeout=12, max_retries=2)
    t0 = time.monotonic()
    resp = c.chat.completions.create(model="chat", messages=MSGS, max_tokens=200, extra_body={"min_tokens": 200})
    took = time.monotonic() - t0
    assert resp.choices[0].message.content.count("t") == 200 and resp.choices[0].finish_reason == "length"
    assert took > 7, took  # it did go through a retry
    jobs = chat_jobs(http)
    assert len(jobs) == 1 and jobs[0]["status"] == "succeeded" and len(rr.model.calls) == 1


def test_the_same_body_from_a_new_request_is_a_new_job(rr, http):
    c = client(rr)
    a = c.chat.completions.create(model="chat", messages=MSGS, max_tokens=3)
    b = c.chat.completions.create(model="chat", messages=MSGS, max_tokens=3)
    assert a.id != b.id and len(chat_jobs(http)) == 2


def test_non_stream_client_that_disconnects_cancels_its_job(rr, http):
    c = client(rr, timeout=2, max_retries=0)
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(model="chat", messages=MSGS, max_tokens=400, extra_body={"min_tokens": 400})
    (job,) = chat_jobs(http)
    assert wait_status(http, job["job_id"], {"cancelled", "succeeded", "failed"})["status"] == "cancelled"
    deadline = time.monotonic() + 5
    while job["job_id"] not in rr.model.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job["job_id"] in rr.model.cancelled  # the generation itself stopped


def test_stream_client_that_goes_away_cancels_its_job(rr, http):
    c = client(rr)
    stream = c.chat.completions.create(model="chat", messages=MSGS, max_tokens=400, extra_body={"min_tokens": 400},
                                       stream=True)
    got = [next(stream) for _ in range(4)]
    stream.close()
    assert got[1].choices[0].delta.content == "t0 "
    (job,) = chat_jobs(http)
    assert wait_status(http, job["job_id"], {"cancelled", "succeeded", "failed"})["status"] == "cancelled"


def test_finished_stream_does_not_cancel(rr, http):
    c = client(rr)
    text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="chat", messages=MSGS, max_tokens=3, stream=True))
    assert text == "t0 t1 t2 "
    (job,) = chat_jobs(http)
    time.sleep(0.3)
    assert http.get(f"/v1/jobs/{job['job_id']}").json()["status"] == "succeeded"


def test_wait_bound_follows_the_client_read_timeout():
    from gpu_orchestrator.api.openai_format import WAIT_CAP_S, wait_bound_s

    assert wait_bound_s(600, None) == WAIT_CAP_S < 600  # under the SDK's 600 s default
    assert wait_bound_s(600, "600") == WAIT_CAP_S
    assert wait_bound_s(600, "60") == 55
    assert wait_bound_s(20, None) == 50
    assert wait_bound_s(600, "3") == WAIT_CAP_S  # too short to answer in time: disconnect semantics
    assert wait_bound_s(600, "nan") == WAIT_CAP_S and wait_bound_s(600, "x") == WAIT_CAP_S


def test_still_running_answer_is_retryable(rr, http):
    with httpx.Client(base_url=rr.base, timeout=30) as c:
        r = c.post("/v1/chat/completions", json={"model": "chat", "messages": MSGS, "max_tokens": 300, "min_tokens": 300},
                   headers={"x-stainless-read-timeout": "11", "Idempotency-Key": "slow-1"})
        assert r.status_code == 503 and r.json()["error"] == "still_running", r.text
        assert r.headers["x-should-retry"] == "true" and r.headers["retry-after"] == "1"
        (job,) = chat_jobs(http)
        assert job["status"] == "running"  # the server ended the wait, not the client: the job goes on
        again = c.post("/v1/chat/completions", json={"model": "chat", "messages": MSGS, "max_tokens": 300, "min_tokens": 300},
                       headers={"Idempotency-Key": "slow-1"})
        assert again.status_code == 200 and again.json()["id"] == f"chatcmpl-{job['job_id']}"
