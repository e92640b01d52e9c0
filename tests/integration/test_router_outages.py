"""The router in-process with Postgres and Redis behind TCP proxies that the tests cut (down) or
stall (slow): an outage never fails a job or makes a request 500; SSE clients keep getting the
terminal status (from the job row when the event is gone) and are told when events may be lost;
streams are bounded in number and duration."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from gpu_orchestrator.client import Client
from tests.helpers import TERMINAL, read_sse, wait_for, wait_status

from .router_harness import (TcpProxy, config, db_url, pg_upstream, proxied_pg_url, redis_upstream,  # noqa: F401
                             running_router)


@pytest.fixture
def faulty(db_url, serve_backend, tmp_path, monkeypatch):  # noqa: F811
    rp = TcpProxy(redis_upstream(serve_backend.redis_url))
    pp = TcpProxy(pg_upstream(db_url))
    try:
        with running_router(proxied_pg_url(db_url, pp), f"redis://127.0.0.1:{rp.port}/0", artifacts=str(tmp_path / "a")) as r:
            r.redis_proxy, r.pg_proxy = rp, pp
            yield r
    finally:
        rp.close()
        pp.close()


@pytest.fixture
def http(faulty):
    with httpx.Client(base_url=faulty.base, timeout=30) as c:
        yield c


def submit(http, **params) -> str:
    r = http.post("/v1/jobs", json={"app_id": "echo", "params": params})
    assert r.status_code == 202, r.text
    return r.json()["job_id"]






def test_sse_survives_a_redis_outage_and_says_events_may_be_lost(faulty, http):
    job_id = submit(http, steps=40, delay_s=0.1)
    cut = []

    def on_event(ev):
        if ev["event"] == "progress" and not cut:
            cut.append(time.monotonic())
            faulty.redis_proxy.cut()
            threading.Timer(1.5, faulty.redis_proxy.restore).start()

    events = read_sse(faulty.base, job_id, on_event=on_event)
    kinds = [e["event"] for e in events]
    assert "gap" in kinds, kinds
    gap = events[kinds.index("gap")]
    assert gap["data"]["reason"] == "event stream unavailable" and gap["data"]["since"]
    assert "progress" in kinds[kinds.index("gap"):]  # live again after the outage
    assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "succeeded", events[-1]
    assert wait_status(http, job_id, TERMINAL)["status"] == "succeeded"


def test_sse_ends_with_the_status_from_the_job_row_when_redis_stays_down(faulty, http):
    job_id = submit(http, steps=10, delay_s=0.1)

    def on_event(ev):
        if ev["event"] == "progress":
            faulty.redis_proxy.cut()

    events = read_sse(faulty.base, job_id, on_event=on_event)
    assert [e["event"] for e in events[-2:]] == ["gap", "status"], events
    assert events[-1]["data"]["status"] == "succeeded" and events[-1]["data"]["source"] == "database"
    assert events[-1]["data"]["result"]["echo"]["steps"] == 10
    job = wait_status(http, job_id, TERMINAL)
    assert job["status"] == "succeeded" and job["attempts"] == 1


def test_jobs_submitted_and_cancelled_while_redis_is_down(faulty, http):
    faulty.redis_proxy.cut()
    done = submit(http, steps=2)
    slow = submit(http, steps=100, delay_s=0.1)
    # Not just "running" (committed at submit): a cancel before the model has the request stops it
    # being sent at all, and this test is about stopping the model's work.
    wait_for(lambda: slow in faulty.model.calls, "the model has the slow job", 10)
    r = http.delete(f"/v1/jobs/{slow}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert wait_status(http, done, TERMINAL)["status"] == "succeeded"
    wait_for(lambda: slow in faulty.model.cancelled, "the model's work stopped too", 10)
    events = read_sse(faulty.base, slow)
    assert events[-1]["data"]["status"] == "cancelled"
    assert faulty.call(faulty.router.wait(done, 10))["status"] == "succeeded"  # the handle method too


def test_a_slow_redis_is_a_timeout_not_a_hang(faulty, http):
    faulty.redis_proxy.stall()
    t0 = time.monotonic()
    job_id = submit(http, steps=3, delay_s=0.05)
    assert time.monotonic() - t0 < 8
    assert wait_status(http, job_id, TERMINAL, timeout_s=40)["status"] == "succeeded"
    t0 = time.monotonic()
    h = http.get("/healthz")
    assert time.monotonic() - t0 < 10
    assert h.status_code == 200 and h.json()["redis"] == "down" and h.json()["reasons"]["redis"] == "timeout", h.text
    events = read_sse(faulty.base, job_id, timeout_s=30)
    assert events[-1]["data"]["status"] == "succeeded"


def test_healthz_says_what_is_down_without_the_raw_error(faulty, http):
    assert http.get("/healthz").json() == {"status": "ok", "database": "ok", "redis": "ok"}
    faulty.redis_proxy.cut()
    r = http.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "degraded", "database": "ok", "redis": "down",
                                                 "reasons": {"redis": "connection refused"}}
    faulty.redis_proxy.restore()
    faulty.pg_proxy.cut()
    r = http.get("/healthz")
    assert r.status_code == 503 and r.json()["database"] == "down" and r.json()["reasons"] == {"database": "connection refused"}
    assert "127.0.0.1" not in r.text and str(faulty.pg_proxy.port) not in r.text


def test_database_outage_answers_503_with_retry_after(faulty, http):
    job_id = submit(http)
    faulty.pg_proxy.cut()
    for r in (http.post("/v1/jobs", json={"app_id": "echo"}), http.get(f"/v1/jobs/{job_id}"),
              http.get("/v1/jobs"), http.delete(f"/v1/jobs/{job_id}"), http.get(f"/v1/jobs/{job_id}/events")):
        assert r.status_code == 503, (r.request.url, r.status_code, r.text)
        assert r.json() == {"error": "service_unavailable", "message": "database unavailable, retry"}
        assert int(r.headers["retry-after"]) > 0
    faulty.pg_proxy.restore()
    assert wait_status(http, job_id, TERMINAL)["status"] == "succeeded"


def test_event_streams_are_bounded_per_replica(faulty, http):
    faulty.router.api.state.limits.max_streams = 1
    job_id = submit(http, steps=30, delay_s=0.1)
    with httpx.stream("GET", f"{faulty.base}/v1/jobs/{job_id}/events", timeout=30) as first:
        assert first.status_code == 200
        lines = first.iter_lines()  # (kept: a dropped iterator closes the stream)
        next(lines)
        r = http.get(f"/v1/jobs/{job_id}/events")
        assert r.status_code == 503 and r.json()["error"] == "too_many_streams" and r.headers["retry-after"], r.text
        msgs = [{"role": "user", "content": "hi"}]
        r = http.post("/v1/chat/completions", json={"model": "chat", "messages": msgs, "stream": True})
        assert r.status_code == 503
    deadline = time.monotonic() + 5
    while faulty.router.api.state.streams.open and time.monotonic() < deadline:
        time.sleep(0.05)
    events = read_sse(faulty.base, job_id)
    assert events[-1]["data"]["status"] == "succeeded"


def test_event_streams_end_after_a_time_limit_and_clients_resume(faulty, http):
    faulty.router.api.state.limits.max_stream_s = 0.5
    job_id = submit(http, steps=25, delay_s=0.1)
    lines: list[str] = []
    events = read_sse(faulty.base, job_id, raw=lines)
    assert any(line.startswith("retry: ") for line in lines)
    assert not any(e["event"] == "status" and e["data"].get("status") in TERMINAL for e in events)
    with Client(faulty.base) as c:
        resumed = list(c.events(job_id, last_event_id=events[-1]["id"]))
        assert resumed[-1]["data"]["status"] == "succeeded"
        seen = [e["data"]["step"] for e in events + resumed if e.get("event") == "progress"]
        assert seen == list(range(1, 26))  # nothing lost or repeated across reconnects
        assert c.wait(job_id, timeout=30)["status"] == "succeeded"


async def serve_stops(router) -> None:
    """What Serve's graceful stop of a replica comes to (serve/router.py's __del__ returns it, and
    Serve awaits it on the replica's loop: tests/unit/test_orchestrator.py): the orchestrator's aclose."""
    await router.aclose()


def test_graceful_stop_hands_leases_back(faulty, http):
    job_id = submit(http, steps=100, delay_s=0.1)
    # "running" is written at the submit; wait until the model really has it (a claim not yet handed
    # to the model goes back too, but then there is no model request to cancel).
    wait_for(lambda: job_id in faulty.model.calls, "the model has the job", 10)
    faulty.call(serve_stops(faulty.router))
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "queued", job
    wait_for(lambda: job_id in faulty.model.cancelled, "the model's request cancelled too", 5)
