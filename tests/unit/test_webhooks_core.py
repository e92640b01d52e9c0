"""Webhooks' pure part: which URLs, the signature, what falls due, the record of tries; and the
in-memory orchestrator delivering to a loopback receiver (the store contract's other side)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gpu_orchestrator.core.webhooks import (after_try, backoff_s, due_events, due_now, new_secret, next_try, sign,
                                            url_problem, verify)


def fixed(*addrs):
    return lambda host: list(addrs)


def test_urls_on_the_clusters_own_networks_are_refused_unless_allowed():
    public = fixed("93.184.215.14")
    assert url_problem("https://example.com/hook", resolve=public) is None
    for url in ("http://10.0.0.5/h", "http://192.168.1.2/h", "http://[::1]:8080/h", "http://169.254.169.254/",
                "http://0.0.0.0/"):
        assert "private or local" in url_problem(url), url
    assert "private or local" in url_problem("https://inside.example/h", resolve=fixed("93.184.215.14", "10.0.0.9"))
    assert url_problem("http://127.0.0.1:9/h", allow_loopback=True) is None
    assert url_problem("http://10.0.0.5/h", allow=["10.0.0.0/8"]) is None
    assert url_problem("http://hooks.internal/h", allow=["hooks.internal"], resolve=fixed("10.1.1.1")) is None
    assert "http:// or https://" in url_problem("file:///etc/passwd")
    assert "not a URL" in url_problem("http://x:99999/")
    assert "private or local" in url_problem("http://100.100.100.200/")  # shared address space (a metadata service)
    assert "private or local" in url_problem("http://[::ffff:10.0.0.1]/")
    assert "does not resolve" in url_problem("http://a..b/", resolve=lambda h: [h.encode("idna").decode()])  # UnicodeError


def test_the_signature_is_standard_webhooks_and_rejects_tampering_and_replays():
    secret = new_secret()
    body, ts = b'{"job_id": "1"}', int(time.time())
    headers = {"webhook-id": "m1", "webhook-timestamp": str(ts), "webhook-signature": sign(secret, "m1", ts, body)}
    assert headers["webhook-signature"].startswith("v1,") and verify(secret, headers, body)
    assert not verify(secret, headers, body + b" ")
    assert not verify(new_secret(), headers, body)
    assert not verify(secret, headers, body, now=ts + 301)  # too old: a replay


def test_what_falls_due_and_what_a_try_records():
    assert due_events("queued", "running", ["start", "completed"], [], []) == ["start"]
    assert due_events("running", "queued", ["start", "completed"], [], ["start"]) == []  # a retry: not again
    assert due_events("queued", "running", ["start"], [], ["start"]) == []
    assert due_events("running", "succeeded", ["start", "completed"], ["start"], []) == ["start", "completed"]
    assert due_events("running", "failed", ["start"], [], []) == []  # not asked for
    t1, t2, t3 = "2026-01-01T00:00:01+00:00", "2026-01-01T00:00:05+00:00", "2026-01-01T00:00:09+00:00"
    pending, st = after_try(["start", "completed"], None, "start", at=t1, delivered=False, status=500,
                            error="answered 500", retry_at=t3)
    assert pending == ["start", "completed"] and st["retry_at"] == {"start": t3} and st["tries"] == {"start": 1}
    # The failing `start` waits for its retry; `completed`, never tried, is due at once.
    assert due_now(pending, st, t2) == ["completed"] and next_try(pending, st, t2) == t2
    pending, st = after_try(pending, st, "completed", at=t2, delivered=True, status=200, error=None, retry_at=None)
    assert pending == ["start"] and st["delivered"] == {"completed": t2} and st["attempts"] == 2
    assert due_now(pending, st, t2) == [] and next_try(pending, st, t2) == t3 and due_now(pending, st, t3) == ["start"]
    pending, st = after_try(pending, st, "start", at=t3, delivered=False, status=None, error="x", retry_at=None)
    assert pending == [] and st["gave_up"] == {"start": t3} and next_try(pending, st, t3) is None
    assert [backoff_s(n, 2.0, 30.0) for n in (1, 2, 3, 4, 5, 6)] == [2, 4, 8, 16, 30, 30]


def test_the_in_memory_orchestrator_delivers_too(tmp_path):
    from gpu_orchestrator.models.echo import Echo
    from gpu_orchestrator.root.memory import in_memory
    from gpu_orchestrator.service.backends import InProcessBackend
    from tests.integration.test_webhooks import Receiver
    from tests.unit.test_orchestrator import CONFIG

    rec = Receiver().start()

    async def main():
        cfg = {**CONFIG, "router": {**CONFIG["router"], "webhooks": {"poll_s": 0.1}}}
        orch = in_memory(cfg, {"echo": InProcessBackend(Echo())})
        orch.start()
        try:
            job = await orch.submit("echo", {}, webhook=rec.url, webhook_events_filter=["start", "completed"])
            for _ in range(300):  # until both tries are recorded on the job (after the receiver has them)
                after = await orch.get(job["job_id"])
                if len((after["webhook_delivery"].get("delivered") or {})) == 2:
                    break
                await asyncio.sleep(0.05)
            return job, after
        finally:
            await orch.aclose()

    try:
        job, after = asyncio.run(main())
        assert [h["webhook-event"] for h, _ in rec.got] == ["start", "completed"]
        assert set(after["webhook_delivery"]["delivered"]) == {"start", "completed"}
    finally:
        rec.stop()


@pytest.fixture(autouse=True)
def _no_real_dns(monkeypatch):
    # Unit tests: no lookups (the URLs above name their addresses, or pass a resolver).
    import socket

    def refuse(*a, **k):
        raise OSError("no DNS in unit tests")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
