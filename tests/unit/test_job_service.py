"""JobService against the in-memory store and event bus: every committed transition publishes
exactly one status event and counts one metric; a Redis outage after a committed submit or cancel
never raises; follow() and wait() end with the job row's truth when events are missing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from gpu_orchestrator.bus.memory import MemoryEventBus
from gpu_orchestrator.core.apps import ParamsInvalid
from gpu_orchestrator.core.config import parse_config
from gpu_orchestrator.core.jobs import (AppNotRunnable, IdempotencyConflict, InvalidRequest, JobNotFound, JobStatus,
                                        TransitionError, UnknownApp)
from gpu_orchestrator.service.jobs import ClientGone, JobService, parse_job_id
from gpu_orchestrator.service.transitions import CountingMetrics, Transitions
from gpu_orchestrator.store.memory import MemoryJobStore

CONFIG = {
    "apps": [
        {"id": "echo", "deployment": "echo", "parameters": [{"name": "message", "type": "string", "default": "hi"}]},
        {"id": "chat", "deployment": "llm", "task": "chat",
         "parameters": [{"name": "messages", "type": "messages", "required": True}]},
        {"id": "audio", "deployment": "echo", "parameters": [{"name": "audio", "type": "file", "required": True}]},
        {"id": "cloud", "kind": "replicate", "cloud": {"backend": "replicate", "model": "stability-ai/sdxl"}},
    ],
    "models": {"echo": {"impl": "deployments.echo:Echo"}, "llm": {"impl": "deployments.llm:LLM"}},
}


class Harness:
    def __init__(self, deployed: set[str] | None = None):
        self.store = MemoryJobStore()
        self.bus = MemoryEventBus()
        self.metrics = CountingMetrics()
        self.pokes = 0
        self.local_cancels: list[uuid.UUID] = []
        self.cloud_cancels: list[uuid.UUID] = []
        self.svc = JobService(
            cfg=parse_config(CONFIG), store=self.store, events=self.bus,
            transitions=Transitions(self.bus, self.metrics, timeout_s=0.5),
            deployed=deployed if deployed is not None else {"echo", "llm"},
            on_submitted=self._poke, cancel_local=self.local_cancels.append, flag_timeout_s=0.5,
            cancel_cloud=lambda job: self.cloud_cancels.append(job.id),
        )

    def _poke(self, job: Any = None) -> None:
        self.pokes += 1

    def claim(self, app_id: str = "echo") -> Any:
        (job,) = self.store.claim(app_id=app_id, owner="r1", limit=1, lease_s=30, max_in_flight=10)
        return job

    def complete(self, job: Any, result: Any = None) -> None:
        self.store.complete(job_id=job.id, owner="r1", attempt=job.claims, result=result or {"ok": 1}, backend="echo")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_submit_publishes_one_queued_event_and_counts_one_metric():
    h = Harness()

    async def go():
        job, created = await h.svc.submit("echo", {"message": "a"}, 0, "key-1")
        again, created_again = await h.svc.submit("echo", {"message": "a"}, 0, "key-1")
        return job, created, again, created_again

    job, created, again, created_again = run(go())
    assert created and not created_again and again.id == job.id
    assert job.params == {"message": "a"}
    assert h.bus.statuses(job.id) == ["queued"]  # the idempotent repeat announces nothing
    assert h.metrics.counts == {("echo", "queued", True): 1}
    assert h.pokes == 1


def test_cancel_publishes_one_event_and_counts_one_metric():
    h = Harness()

    async def go():
        first, _ = await h.svc.submit("echo", {})
        second, _ = await h.svc.submit("echo", {})
        return first, second

    first, second = run(go())
    assert h.claim().id == first.id  # same priority: FIFO; `second` stays queued
    run(h.svc.cancel(first.id))
    run(h.svc.cancel(second.id))
    assert h.bus.statuses(first.id) == ["queued", "cancelled"]
    assert h.bus.statuses(second.id) == ["queued", "cancelled"]
    assert h.metrics.counts[("echo", "cancelled", False)] == 2
    assert h.metrics.total() == 4
    # the running one: its model is told (flag) and the local request cancelled; the queued one not
    assert h.bus.is_cancelled(first.id) and not h.bus.is_cancelled(second.id)
    assert h.local_cancels == [first.id]
    with pytest.raises(TransitionError):
        run(h.svc.cancel(first.id))
    assert h.metrics.total() == 4 and len(h.bus.events(type="status")) == 4  # a refused cancel: nothing


def test_cancel_reaches_a_cloud_run_no_replica_here_waits_on():
    h = Harness()

    async def go():
        plain = (await h.svc.submit("echo", {"message": "local"}))[0]
        between = (await h.svc.submit("echo", {"message": "between attempts"}))[0]
        job = h.claim()
        assert job.id == plain.id
        h.store.set_cloud_ref(job_id=job.id, owner="r1", attempt=job.claims, ref={"provider": "replicate", "id": "p1"})
        other = h.claim()
        h.store.set_cloud_ref(job_id=other.id, owner="r1", attempt=other.claims, ref={"provider": "replicate", "id": "p2"})
        h.store.fail_attempt(job_id=other.id, owner="r1", attempt=other.claims, error="HTTP 503", retryable=True)
        assert h.store.get(other.id).status == JobStatus.queued  # its run goes on for the next attempt
        await h.svc.cancel(plain.id)  # running, its router elsewhere (or dead)
        await h.svc.cancel(between.id)
        never = (await h.svc.submit("echo", {"message": "no run"}))[0]
        await h.svc.cancel(never.id)
        return plain, between

    plain, between = run(go())
    assert h.cloud_cancels == [plain.id, between.id]


def test_redis_outage_after_committed_submit_and_cancel_never_raises():
    h = Harness()

    async def go():
        with h.bus.outage():
            job, created = await h.svc.submit("echo", {})
            other, _ = await h.svc.submit("echo", {})
            h.claim()
            cancelled = await h.svc.cancel(job.id)  # running: the cancel flag fails too
            cancelled_queued = await h.svc.cancel(other.id)
        return job, created, cancelled, cancelled_queued

    job, created, cancelled, cancelled_queued = run(go())
    assert created and cancelled.status == JobStatus.cancelled and cancelled_queued.status == JobStatus.cancelled
    assert h.store.get(job.id).status == JobStatus.cancelled
    assert h.bus.published == []  # nothing got through ...
    assert h.metrics.total() == 4  # ... but every transition was counted
    assert h.local_cancels == [job.id]  # and the local request still cancelled


def test_follow_ends_with_the_terminal_status_from_the_row_when_the_event_is_missing():
    h = Harness()

    async def go():
        job, _ = await h.svc.submit("echo", {})
        claimed = h.claim()
        h.complete(claimed, {"answer": 42})  # committed, but no event published
        return job, [ev async for ev in h.svc.follow(job.id, block_ms=50)]

    job, events = run(go())
    real = [e for e in events if e is not None]
    assert [e.data.get("status") for e in real] == ["queued", "succeeded"]
    last = real[-1]
    assert last.terminal and last.data["source"] == "database" and last.data["result"] == {"answer": 42}
    assert last.id == real[0].id  # the last real event's id: a resume loses nothing


def test_follow_through_a_redis_outage_says_gap_then_ends_from_the_row():
    h = Harness()

    async def go():
        job, _ = await h.svc.submit("echo", {})
        h.complete(h.claim())
        with h.bus.outage():
            return [ev async for ev in h.svc.follow(job.id, block_ms=50, retry_s=0.01)]

    events = [e for e in run(go()) if e is not None]
    assert [e.type for e in events] == ["gap", "status"]
    assert events[-1].data["status"] == "succeeded"


def test_wait_times_out_returning_the_running_job():
    h = Harness()

    async def go():
        job, _ = await h.svc.submit("echo", {})
        h.claim()
        return await h.svc.wait(job.id, 0.3)

    assert run(go()).status == JobStatus.running


def test_wait_returns_at_the_terminal_event_and_notices_a_caller_that_left():
    h = Harness()

    async def go():
        job, _ = await h.svc.submit("echo", {})
        claimed = h.claim()

        async def finish():
            await asyncio.sleep(0.1)
            h.complete(claimed)
            await h.svc.transitions.announce(job.id, job.app_id, JobStatus.succeeded)

        done, _ = await asyncio.gather(h.svc.wait(job.id, 10), finish())
        other, _ = await h.svc.submit("echo", {})

        async def gone() -> bool:
            return True

        with pytest.raises(ClientGone):
            await h.svc.wait(other.id, 10, gone=gone)
        return done

    assert run(go()).status == JobStatus.succeeded


def test_refusals_are_domain_errors_naming_the_field():
    h = Harness(deployed={"echo"})

    def refused(exc: type, *args: Any) -> Any:
        with pytest.raises(exc) as e:
            run(h.svc.submit(*args))
        return e.value

    assert refused(UnknownApp, "nope", {}).field == "app_id"
    assert refused(UnknownApp, "nope", {}).code == "unknown_app"
    assert refused(AppNotRunnable, "cloud", {}).code == "app_not_runnable"  # kind replicate
    assert refused(AppNotRunnable, "chat", {"messages": [{"role": "user", "content": "x"}]}).field == "app_id"
    assert refused(InvalidRequest, "", {}).field == "app_id"
    assert refused(InvalidRequest, "ec\x00ho", {}).field == "app_id"
    for bad in (101, -101, True, 1.5, "1"):
        assert refused(InvalidRequest, "echo", {}, bad).field == "priority"
    e = refused(InvalidRequest, "echo", {}, 0, "caf\xe9")
    assert e.field == "Idempotency-Key" and e.code == "invalid_request"
    assert {x.field for x in refused(ParamsInvalid, "echo", {"message": 5, "x": 1}).errors} >= {"params.x"}
    assert [x.field for x in refused(ParamsInvalid, "audio", {"audio": "artifact://uploads/a/b.wav"}).errors] \
        == ["params.audio"]  # no artifact store: the file cannot exist
    assert h.store.list()[0] == [] and h.bus.published == [] and h.metrics.total() == 0


def test_an_idempotency_key_never_returns_another_apps_job():
    h = Harness()

    async def go():
        await h.svc.submit("echo", {}, 0, "k")
        await h.svc.submit("chat", {"messages": [{"role": "user", "content": "x"}]}, 0, "k")

    # The store keys by (app, key): another app's key is another job.
    run(go())
    assert len(h.store.list()[0]) == 2
    with pytest.raises(IdempotencyConflict):
        run(h.svc.submit("echo", {"message": "other"}, 0, "k"))

    # Neither store can hand back another app's job for a key; the service checks anyway. A store
    # that did (created=False, app "chat" for a submit to "echo") is refused, and nothing is announced.
    h = Harness()
    (chat_job, _) = h.store.submit(app_id="chat", params={"messages": []}, priority=0, idempotency_key="k")

    class CrossAppStore:
        def __init__(self, inner: MemoryJobStore) -> None:
            self.inner = inner
            self.calls: list[dict[str, Any]] = []

        async def asubmit(self, **kw: Any) -> tuple[Any, bool]:
            self.calls.append(kw)
            return chat_job, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    h.svc.store = stub = CrossAppStore(h.store)
    with pytest.raises(IdempotencyConflict) as e:
        run(h.svc.submit("echo", {}, 0, "k"))
    assert [c["app_id"] for c in stub.calls] == ["echo"]  # the check ran after the store's submit
    assert (e.value.app_id, e.value.key, e.value.job_id) == ("echo", "k", chat_job.id)
    assert h.bus.published == [] and h.metrics.total() == 0 and h.pokes == 0


def test_get_list_and_bad_inputs():
    h = Harness()
    job, _ = run(h.svc.submit("echo", {}))
    assert run(h.svc.get(job.id)).id == job.id
    with pytest.raises(JobNotFound):
        run(h.svc.get(uuid.uuid4()))
    jobs, nxt = run(h.svc.list(app_id="echo"))
    assert [j.id for j in jobs] == [job.id] and nxt is None
    for field, kw in (("app_id", {"app_id": "a\x00"}), ("cursor", {"cursor": "not-a-cursor"})):
        with pytest.raises(InvalidRequest) as e:
            run(h.svc.list(**kw))
        assert e.value.field == field
    assert parse_job_id(str(job.id)) == job.id
    with pytest.raises(ValueError, match="not a UUID"):
        parse_job_id("nope")


def test_cancel_soon_spares_a_job_someone_here_still_waits_for():
    h = Harness()

    async def go():
        attached, _ = await h.svc.submit("echo", {})
        alone, _ = await h.svc.submit("echo", {})
        with h.svc.attached(attached.id):
            h.svc.cancel_soon(attached.id, "test")
        h.svc.cancel_soon(alone.id, "test")
        while h.svc._tasks:
            await asyncio.sleep(0.01)
        return attached, alone

    attached, alone = run(go())
    assert h.store.get(attached.id).status == JobStatus.queued
    assert h.store.get(alone.id).status == JobStatus.cancelled


def test_cancel_soon_tries_again_through_a_store_blip(monkeypatch):
    import gpu_orchestrator.service.jobs as jobs_mod

    monkeypatch.setattr(jobs_mod, "CANCEL_SOON_RETRIES_S", (0.01, 0.01))
    h = Harness()
    real, fails = h.store.cancel, [ConnectionError("server closed the connection"), OSError("timeout")]

    def flaky(job_id):
        if fails:
            raise fails.pop(0)
        return real(job_id)

    h.store.cancel = flaky

    async def go():
        job, _ = await h.svc.submit("echo", {})
        h.svc.cancel_soon(job.id, "client disconnected")
        while h.svc._tasks:
            await asyncio.sleep(0.01)
        return job

    job = run(go())
    assert fails == [] and h.store.get(job.id).status == JobStatus.cancelled


def test_cancel_soon_does_not_try_again_once_a_caller_here_waits_for_the_job(monkeypatch):
    import gpu_orchestrator.service.jobs as jobs_mod

    monkeypatch.setattr(jobs_mod, "CANCEL_SOON_RETRIES_S", (0.2,))
    h = Harness()
    real, calls = h.store.cancel, []

    def flaky(job_id):
        calls.append(job_id)
        if len(calls) == 1:
            raise ConnectionError("server closed the connection")
        return real(job_id)

    h.store.cancel = flaky

    async def go():
        job, _ = await h.svc.submit("echo", {})
        h.svc.cancel_soon(job.id, "client disconnected")
        await asyncio.sleep(0.05)  # the first try failed; the retry waits
        with h.svc.attached(job.id):  # the client came back and waits for it on this replica
            while h.svc._tasks:
                await asyncio.sleep(0.01)
        return job

    job = run(go())
    assert len(calls) == 1 and h.store.get(job.id).status == JobStatus.queued


def test_remembered_jobs_are_lossy_not_errors():
    h = Harness()

    async def go():
        job, _ = await h.svc.submit("echo", {})
        await h.svc.remember("fp", job.id, 60)
        found = await h.svc.recall("fp")
        with h.bus.outage():
            await h.svc.remember("fp2", job.id, 60)
            lost = await h.svc.recall("fp")
        await h.svc.remember("bad", uuid.uuid4(), 60)
        return job, found, lost, await h.svc.recall("bad"), await h.svc.recall("unknown")

    job, found, lost, missing, unknown = run(go())
    assert found.id == job.id and lost is None and missing is None and unknown is None


def test_health_names_what_is_down():
    h = Harness()
    assert run(h.svc.health()) == ({"database": "ok", "redis": "ok"}, {})
    h.store.available = False
    with h.bus.outage():
        checks, reasons = run(h.svc.health())
    assert checks == {"database": "down", "redis": "down"} and set(reasons) == {"database", "redis"}


def test_a_busy_fallback_routes_on_the_queue_as_it_is_not_as_a_replica_last_read_it():
    """Two router replicas on one store, neither having read queue stats since it started: a
    when: busy app's submit reads its queue first, so each replica counts the other's jobs and the
    third job (two waves of 4 s ahead > 6 s) goes to the fallback, whichever replica takes it."""
    from gpu_orchestrator.service.cloud.routing import CloudRouting

    cfg = parse_config({
        "apps": [{"id": "busy", "deployment": "echo", "max_in_flight": 1, "parameters": [],
                  "fallback": {"backend": "replicate", "model": "test/echo", "when": "busy",
                               "max_local_wait_s": 6, "service_s": 4}}],
        "models": {"echo": {"impl": "deployments.echo:Echo"}},
    })
    store, bus = MemoryJobStore(), MemoryEventBus()

    def replica() -> JobService:
        return JobService(cfg=cfg, store=store, events=bus, transitions=Transitions(bus, CountingMetrics()),
                          deployed={"echo"}, routing=CloudRouting(cfg, {"replicate": None}))

    a, b = replica(), replica()

    async def go():
        first, _ = await a.submit("busy", {})  # nothing ahead: runs at once
        second, _ = await b.submit("busy", {})  # one wave ahead: 4 s <= 6 s
        third, _ = await a.submit("busy", {})  # two waves ahead: 8 s > 6 s
        return first, second, third

    first, second, third = run(go())
    assert first.route is None and second.route is None
    assert third.route == "replicate" and third.route_reason == "estimated local wait 8 s > max_local_wait_s 6 s"
