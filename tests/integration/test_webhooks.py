"""Webhooks end to end on a running router (real Postgres: its status trigger marks what is due;
real Redis), against a receiver on loopback: signed POSTs of the job on start and completion,
retries while the receiver is down, giving up after the bounded time, never holding up jobs."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from gpu_orchestrator.core.webhooks import verify
from tests.helpers import free_port, wait_for, wait_terminal

from .router_harness import config, db_url, running_router  # noqa: F401 (fixtures)


class Receiver:
    """An HTTP server on loopback that keeps what it is sent; `answer` is the status it gives
    (None: it never answers, until stopped)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.answer: int | None = 204
        self.answer_for: dict[str, int] = {}  # per event (webhook-event header), over `answer`
        self.server: ThreadingHTTPServer | None = None
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> "Receiver":
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                me.got.append((dict(self.headers.items()), body))
                answer = me.answer_for.get(self.headers.get("webhook-event", ""), me.answer)
                if answer is None:
                    me.release.wait(30)
                    return
                self.send_response(answer)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def bodies(self) -> list[dict]:
        return [json.loads(b) for _, b in self.got]


HOOKS = {"allow_loopback": True, "backoff_s": 0.2, "backoff_max_s": 0.5, "poll_s": 0.2, "timeout_s": 2}


@pytest.fixture
def router(db_url, serve_backend, tmp_path, monkeypatch):
    def make(**webhooks):
        return running_router(db_url, serve_backend.redis_url, artifacts=str(tmp_path / "art"),
                              cfg=config(webhooks={**HOOKS, **webhooks}))
    return make


def submit(http, url, events=None, **params) -> str:
    body = {"app_id": "echo", "params": params, "webhook": url}
    if events is not None:
        body["webhook_events_filter"] = events
    r = http.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def delivery(http, job_id) -> dict:
    return http.get(f"/v1/jobs/{job_id}").json()["webhook_delivery"]


def test_start_and_completion_are_posted_signed_and_recorded_on_the_job(router):
    rec = Receiver().start()
    try:
        with router() as rr, httpx.Client(base_url=rr.base, timeout=30) as http:
            job = submit(http, rec.url, ["start", "completed"], delay_s=0.3, message="hooked")
            wait_for(lambda: len(rec.got) >= 2, "two deliveries", 30)
            secret = http.get("/v1/webhooks/default/secret").json()["key"]
            start, done = rec.bodies()
            assert [h["webhook-event"] for h, _ in rec.got] == ["start", "completed"]
            assert start["job_id"] == done["job_id"] == job and start["status"] == "running"
            assert done["status"] == "succeeded" and done["result"]["echo"]["message"] == "hooked"
            assert all(verify(secret, h, b) for h, b in rec.got)  # Standard Webhooks' signature
            h, b = rec.got[1]
            assert not verify(secret, h, b.replace(b"hooked", b"forged"))
            assert not verify(secret, {**h, "webhook-timestamp": str(int(time.time()) - 3600)}, b)  # a replay
            d = wait_for(lambda: (d := delivery(http, job)) and not d["pending"] and d, "recorded", 10)
            assert set(d["delivered"]) == {"start", "completed"} and d["last_status"] == 204 and d["attempts"] == 2
            # Without a filter: the completion only.
            plain = submit(http, rec.url)
            wait_terminal(http, plain)
            wait_for(lambda: len(rec.got) == 3, "the third delivery", 30)
            assert rec.bodies()[2]["job_id"] == plain and rec.bodies()[2]["status"] == "succeeded"
    finally:
        rec.stop()


def test_a_receiver_that_is_down_gets_the_job_when_it_comes_back(router):
    rec = Receiver()  # nothing listens on its port yet
    try:
        with router() as rr, httpx.Client(base_url=rr.base, timeout=30) as http:
            job = submit(http, rec.url)
            assert wait_terminal(http, job)["status"] == "succeeded"  # the job did not wait for its webhook
            d = wait_for(lambda: (d := delivery(http, job)).get("attempts", 0) >= 2 and d, "failed tries", 30)
            assert d["pending"] == ["completed"] and "ConnectError" in d["last_error"] and d["last_status"] is None
            rec.start()
            d = wait_for(lambda: (d := delivery(http, job)) and "delivered" in d and d, "the delivery", 30)
            assert d["pending"] == [] and d["last_status"] == 204 and d["attempts"] >= 3
            assert [b["job_id"] for b in rec.bodies()] == [job]
    finally:
        rec.stop()


def test_a_failing_receiver_is_given_up_after_the_bounded_time_and_a_stuck_one_holds_nothing_up(router):
    rec = Receiver().start()
    rec.answer = 500
    try:
        with router(retry_for_s=1.5, timeout_s=1) as rr, httpx.Client(base_url=rr.base, timeout=30) as http:
            job = submit(http, rec.url)
            d = wait_for(lambda: (d := delivery(http, job)) and "gave_up" in d and d, "given up", 30)
            assert d["pending"] == [] and d["last_status"] == 500 and d["attempts"] >= 2 and "delivered" not in d
            tries = len(rec.got)
            time.sleep(1.0)  # given up means no more tries
            assert len(rec.got) == tries
            rec.answer = None  # accepts, never answers
            stuck = submit(http, rec.url)
            t0 = time.monotonic()
            others = [http.post("/v1/jobs", json={"app_id": "echo"}).json()["job_id"] for _ in range(3)]
            assert all(wait_terminal(http, j)["status"] == "succeeded" for j in [stuck, *others])
            assert time.monotonic() - t0 < 10
            d = wait_for(lambda: (d := delivery(http, stuck)).get("attempts", 0) >= 1 and d, "a timed-out try", 30)
            assert "Timeout" in d["last_error"]
    finally:
        rec.stop()


def test_urls_and_events_are_checked_at_submit(router):
    with router(allow_loopback=False, allow=["10.9.0.0/16"]) as rr, httpx.Client(base_url=rr.base, timeout=30) as http:
        for body, field, words in (
            ({"webhook": "http://127.0.0.1:9/h"}, "webhook", "private or local network"),
            ({"webhook": "http://10.1.2.3/h"}, "webhook", "router.webhooks.allow"),
            ({"webhook": "http://169.254.169.254/latest/meta-data"}, "webhook", "private or local"),
            ({"webhook": "ftp://example.com/x"}, "webhook", "http:// or https://"),
            ({"webhook": "http://x.invalid/h"}, "webhook", "does not resolve"),
            ({"webhook": "https://example.com/h", "webhook_events_filter": ["output"]}, "webhook_events_filter", "start"),
            ({"webhook_events_filter": ["completed"]}, "webhook", "needs a webhook"),
        ):
            r = http.post("/v1/jobs", json={"app_id": "echo", **body})
            assert r.status_code == 422 and r.json()["fields"][0]["field"] == field and words in r.text, (body, r.text)
        assert http.get("/v1/jobs").json()["jobs"] == []  # nothing accepted
        ok = http.post("/v1/jobs", json={"app_id": "echo", "webhook": "http://10.9.4.5/h"})  # allowed by the operator
        assert ok.status_code == 202, ok.text


def test_a_failing_start_delays_no_completion(router):
    rec = Receiver().start()
    rec.answer_for = {"start": 500}
    try:
        with router(backoff_s=5, backoff_max_s=5) as rr, httpx.Client(base_url=rr.base, timeout=30) as http:
            job = submit(http, rec.url, ["start", "completed"], delay_s=0.3)
            d = wait_for(lambda: (d := delivery(http, job)) and "completed" in (d.get("delivered") or {}) and d,
                         "the completion delivered", 15)
            assert d["pending"] == ["start"] and d["tries"] == {"start": 1, "completed": 1}  # start waits its 5 s
            rec.answer_for = {}
            d = wait_for(lambda: (d := delivery(http, job)) and not d["pending"] and d, "the start delivered", 30)
            assert set(d["delivered"]) == {"start", "completed"} and d["tries"]["start"] == 2
    finally:
        rec.stop()

