"""The dispatcher without a database, Redis or Ray: a MemoryJobStore on a manual clock, the in-memory
event bus and a fake model backend whose runs the test finishes by hand. Every transition the
dispatcher commits is announced exactly once: one status event and one metric."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from typing import Any

import pytest

from gpu_orchestrator.bus.memory import MemoryEventBus
from gpu_orchestrator.core.config import parse_config
from gpu_orchestrator.core.jobs import JobStatus, RetryPolicy
from gpu_orchestrator.core.model_errors import JobCancelled, ModelError, ModelFailed, ModelLoadError, ReplicaDied
from gpu_orchestrator.service.dispatcher import Dispatcher
from gpu_orchestrator.service.transitions import CountingMetrics, Transitions
from gpu_orchestrator.store.base import StoreUnavailable
from gpu_orchestrator.store.memory import ManualClock, MemoryJobStore
from tests.helpers import until

Q, R, S, F = JobStatus.queued, JobStatus.running, JobStatus.succeeded, JobStatus.failed


class FakeRun:
    """One attempt on the fake model: pending until the test calls succeed() or fail()."""

    def __init__(self, job, attempt: int, timeout_s: float, queue_timeout_s: float):
        self.job, self.attempt = job, attempt
        self.timeout_s, self.queue_timeout_s = timeout_s, queue_timeout_s
        self.fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # an aborted run's error is not news
        self.cancelled = False

    def succeed(self, result: Any) -> None:
        if not self.fut.done():
            self.fut.set_result(result)

    def fail(self, exc: ModelError) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)

    def cancel(self) -> None:
        self.cancelled = True
        self.fail(JobCancelled("the model request was cancelled"))

    def __await__(self):
        return asyncio.shield(self.fut).__await__()  # our waiter's cancel is not the run's


class FakeBackend:
    """Runs finish as `outcomes` say, in order (a value succeeds, a ModelError fails, HANG waits for
    the test); past the list, runs wait."""

    HANG = object()

    def __init__(self, *outcomes: Any):
        self.outcomes = list(outcomes)
        self.runs: list[FakeRun] = []

    def run(self, job, attempt: int, *, timeout_s: float, queue_timeout_s: float) -> FakeRun:
        r = FakeRun(job, attempt, timeout_s, queue_timeout_s)
        self.runs.append(r)
        outcome = self.outcomes.pop(0) if self.outcomes else self.HANG
        if isinstance(outcome, ModelError):
            r.fail(outcome)
        elif outcome is not self.HANG:
            r.succeed(outcome)
        return r


class Rig:
    def __init__(self, backend: FakeBackend, *, store: Any = None, app: dict | None = None, **kw: Any):
        router = {"lease_s": 0.3, "poll_interval_s": 0.01, "retry_backoff_s": 0.0, **kw.pop("router", {})}
        self.cfg = parse_config({
            "apps": [{"id": "a", "deployment": "m", "max_attempts": 2, "timeout_s": 30, "max_in_flight": 4, **(app or {})}],
            "models": {"m": {"impl": "deployments.echo:Echo"}},
            "router": router,
        })
        self.clock = ManualClock()
        self.store = store or MemoryJobStore(clock=self.clock)
        self.bus = MemoryEventBus()
        self.metrics = CountingMetrics()
        self.backend = backend
        self.d = Dispatcher(cfg=self.cfg, store=self.store, transitions=Transitions(self.bus, self.metrics),
                            backends={"m": backend}, owner="router-1", **kw)
        self.d.WRITE_BACKOFF_S = (0.01, 0.05)

    def submit(self, app: str = "a", max_attempts: int = 2, **params: Any) -> uuid.UUID:
        job, _ = self.store.submit(app_id=app, params=params, max_attempts=max_attempts, timeout_s=30)
        return job.id

    def statuses(self, job_id: uuid.UUID) -> list[str]:
        return self.bus.statuses(job_id)

    def assert_one_event_and_metric_each(self) -> None:
        """Every status event has its metric and every metric its event (none twice, none missing)."""
        events = Counter((e.data["status"]) for _, e in self.bus.published if e.type == "status")
        counted = Counter()
        for (_, status, _new), n in self.metrics.counts.items():
            counted[status] += n
        assert events == counted, (events, counted)



async def settled(rig: Rig, job_id: uuid.UUID, *statuses: JobStatus, what: str = ""):
    statuses = statuses or (S, F, JobStatus.cancelled)
    return await until(lambda: (j := rig.store.get(job_id)).status in statuses and not rig.d.inflight and j,
                       what=what or f"job to be {[s.value for s in statuses]}")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def stop(rig: Rig) -> None:
    await rig.d.stop()
    for f in list(rig.d.inflight.values()):
        if f.task:
            f.task.cancel()
    await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def started(rig: Rig):
    """The rig's dispatcher running for the block, stopped after it however the block ends."""
    rig.d.start()
    try:
        yield rig
    finally:
        await stop(rig)


def run_to_end(rig: Rig, **submit: object):
    """Submit one job, run the dispatcher until the job is terminal, stop it; the job."""
    async def go():
        job_id = rig.submit(**submit)
        async with started(rig):
            return await settled(rig, job_id)

    return run(go())


def test_claim_and_success():
    async def go():
        rig = Rig(FakeBackend({"out": 1}))
        job_id = rig.submit(x=1)
        async with started(rig):
            job = await settled(rig, job_id)
        return rig, job

    rig, job = run(go())
    assert job.status == S and job.result == {"out": 1} and job.backend == "local:m"
    assert (job.attempts, job.claims) == (1, 1)
    (r,) = rig.backend.runs
    assert r.job.params == {"x": 1} and r.attempt == 1 and r.timeout_s == 30
    assert r.queue_timeout_s == rig.cfg.router.replica_queue_timeout_s
    assert rig.statuses(job.id) == ["running", "succeeded"]
    (ev,) = [e for e in rig.bus.events(job.id, "status") if e.data["status"] == "succeeded"]
    assert ev.data["result"] == {"out": 1} and ev.data["attempt"] == 1
    assert rig.metrics.counts == Counter({("a", "running", False): 1, ("a", "succeeded", False): 1})
    rig.assert_one_event_and_metric_each()


def test_failure_then_retry_then_success():
    rig = Rig(FakeBackend(ModelFailed.of(RuntimeError("out of memory (first try)")), {"attempt": 2}))
    job = run_to_end(rig)
    assert job.status == S and job.result == {"attempt": 2} and job.error is None
    assert (job.attempts, job.claims) == (2, 2)
    (err,) = job.errors
    assert (err["attempt"], err["kind"], err["error"]) == (1, "error", "RuntimeError: out of memory (first try)")
    assert rig.statuses(job.id) == ["running", "queued", "running", "succeeded"]
    queued = rig.bus.events(job.id, "status")[1].data
    assert queued["error"] == "RuntimeError: out of memory (first try)" and queued["attempt"] == 1
    assert rig.metrics.counts[("a", "queued", False)] == 1 and rig.metrics.counts[("a", "running", False)] == 2
    rig.assert_one_event_and_metric_each()


def test_retries_exhausted_fail_the_job_with_each_error_kept():
    rig = Rig(FakeBackend(ReplicaDied("the actor died unexpectedly", "ActorDiedError"),
                          ModelFailed.of(ValueError("bad input"))))
    job = run_to_end(rig, max_attempts=2)
    assert job.status == F and job.attempts == 2 and job.error == "ValueError: bad input"
    assert [(e["attempt"], e["kind"], e["error"]) for e in job.errors] == [
        (1, "replica_died", "ActorDiedError: the actor died unexpectedly"), (2, "error", "ValueError: bad input")]
    assert rig.statuses(job.id) == ["running", "queued", "running", "failed"]
    assert len(rig.backend.runs) == 2
    rig.assert_one_event_and_metric_each()


def test_a_load_error_is_not_retried():
    rig = Rig(FakeBackend(ModelLoadError("m failed to load: OSError: no such file")))
    job = run_to_end(rig, max_attempts=3)
    assert job.status == F and job.attempts == 1 and len(rig.backend.runs) == 1
    assert job.error == "ModelLoadError: m failed to load: OSError: no such file"
    assert job.errors[0]["kind"] == "load_error"
    assert rig.statuses(job.id) == ["running", "failed"]
    rig.assert_one_event_and_metric_each()


def test_a_model_timeout_reads_as_its_message():
    from gpu_orchestrator.core.model_errors import JobTimeout, SlotTimeout

    async def go():
        rig = Rig(FakeBackend(SlotTimeout("waited 0.1 s for a free replica slot (1 job(s) running on it)"),
                              JobTimeout("timed out after 5 s")))
        job_id = rig.submit(max_attempts=2)
        async with started(rig):
            return await settled(rig, job_id)

    job = run(go())
    assert [(e["kind"], e["error"]) for e in job.errors] == [
        ("slot_timeout", "waited 0.1 s for a free replica slot (1 job(s) running on it)"),
        ("timeout", "timed out after 5 s")]


def test_a_replica_that_never_answers_fails_the_attempt_and_its_run_is_cancelled():
    async def go():
        rig = Rig(FakeBackend(), router={"replica_queue_timeout_s": 0.1})
        rig.d.ANSWER_MARGIN_S = 0.0
        job, _ = rig.store.submit(app_id="a", params={}, max_attempts=1, timeout_s=0.1)
        async with started(rig):
            return rig, await settled(rig, job.id)

    rig, job = run(go())
    assert job.status == F and job.error == "no answer from the model replica after 0.2 s"
    assert job.errors[0]["kind"] == "timeout" and rig.backend.runs[0].cancelled
    rig.assert_one_event_and_metric_each()


def test_cancel_local_stops_the_run_and_no_result_is_written():
    async def go():
        rig = Rig(FakeBackend(), router={"lease_s": 30})  # no heartbeat meanwhile: cancel_local stops it
        job_id = rig.submit()
        async with started(rig):
            await until(lambda: rig.backend.runs, what="the run to start")
            await asyncio.to_thread(rig.store.cancel, job_id)  # what DELETE /v1/jobs/{id} does first
            assert rig.d.cancel_local(job_id) is True
            assert rig.d.cancel_local(uuid.uuid4()) is False  # not running here
            await until(lambda: not rig.d.inflight, what="the attempt to go")
            rig.backend.runs[0].succeed({"too": "late"})
            await asyncio.sleep(0.05)
            return rig, rig.store.get(job_id)

    rig, job = run(go())
    assert rig.backend.runs[0].cancelled
    assert job.status == JobStatus.cancelled and job.result is None and job.errors == ()
    assert rig.statuses(job.id) == ["running"]  # the cancel is announced by whoever committed it
    rig.assert_one_event_and_metric_each()


def test_a_model_that_sees_the_cancel_flag_records_nothing():
    async def go():
        rig = Rig(FakeBackend())
        job_id = rig.submit()
        async with started(rig):
            await until(lambda: rig.backend.runs, what="the run to start")
            await asyncio.to_thread(rig.store.cancel, job_id)
            rig.backend.runs[0].fail(JobCancelled(f"job {job_id} cancelled"))
            await until(lambda: not rig.d.inflight, what="the attempt to go")
            return rig, rig.store.get(job_id)

    rig, job = run(go())
    assert job.status == JobStatus.cancelled and job.errors == ()
    assert rig.statuses(job.id) == ["running"]


def test_a_lost_lease_aborts_the_run_and_drops_its_result():
    async def go():
        rig = Rig(FakeBackend(FakeBackend.HANG, {"attempt": 2}))
        job_id = rig.submit()
        async with started(rig):
            await until(lambda: rig.backend.runs and rig.store.get(job_id).dispatched_at, what="attempt 1 to start")
            # This router stalled past its lease; another router's rescue re-queued the job.
            for _ in range(100):
                rig.clock.advance(rig.cfg.router.lease_s + 1)
                if rig.store.rescue_expired(RetryPolicy(backoff_s=0.0)):
                    break
            first = rig.backend.runs[0]
            # The next heartbeat no longer holds the lease: attempt 1 is aborted, the job claimed again.
            await until(lambda: first.cancelled, what="attempt 1's run to be cancelled")
            first.succeed({"attempt": 1})  # too late: dropped
            return rig, first, await settled(rig, job_id)

    rig, first, job = run(go())
    assert job.status == S and job.result == {"attempt": 2}
    assert (job.attempts, job.claims, job.lost_attempts) == (1, 2, 1)
    assert [(e["attempt"], e["kind"]) for e in job.errors] == [(1, "lost")]
    assert rig.statuses(job.id) == ["running", "running", "succeeded"]  # the rescue was the other router's


def test_a_result_that_arrives_after_the_lease_was_lost_is_dropped():
    async def go():
        rig = Rig(FakeBackend(FakeBackend.HANG, {"attempt": 2}), router={"lease_s": 30})  # no heartbeat meanwhile
        job_id = rig.submit()
        async with started(rig):
            await until(lambda: rig.backend.runs and rig.store.get(job_id).dispatched_at, what="attempt 1 to start")
            rig.clock.advance(31)
            assert rig.store.rescue_expired(RetryPolicy(backoff_s=0.0))  # another router's rescue
            rig.backend.runs[0].succeed({"attempt": 1})  # this attempt no longer owns the job
            return rig, await settled(rig, job_id, S)

    rig, job = run(go())
    assert job.status == S and job.result == {"attempt": 2} and len(rig.backend.runs) == 2
    assert rig.statuses(job.id) == ["running", "running", "succeeded"]


def test_the_dispatchers_own_rescue_is_announced():
    async def go():
        rig = Rig(FakeBackend({"ok": True}))
        job_id = rig.submit()
        rig.store.claim(app_id="a", owner="router-that-died", limit=1, lease_s=0.3, max_in_flight=4)
        rig.clock.advance(5)
        async with started(rig):
            return rig, await settled(rig, job_id)

    rig, job = run(go())
    assert job.status == S and job.errors[0]["kind"] == "not_dispatched"
    assert rig.statuses(job.id) == ["queued", "running", "succeeded"]
    assert rig.metrics.counts[("a", "queued", False)] == 1
    rig.assert_one_event_and_metric_each()


def test_release_all_hands_every_job_back():
    async def go():
        rig = Rig(FakeBackend(), router={"lease_s": 60})
        ids = [rig.submit() for _ in range(3)]
        rig.d.start()
        await until(lambda: len(rig.backend.runs) == 3 and all(rig.store.get(i).dispatched_at for i in ids),
                    what="3 runs to start")
        n = await rig.d.release_all()
        return rig, n, ids

    rig, n, ids = run(go())
    jobs = [rig.store.get(i) for i in ids]
    assert n == 3 and all(r.cancelled for r in rig.backend.runs)
    assert all(j.status == Q and j.lease_owner is None and (j.attempts, j.lost_attempts) == (0, 1) for j in jobs)
    assert all(j.errors[-1]["kind"] == "released" for j in jobs)
    assert all(rig.statuses(i) == ["running", "queued"] for i in ids)
    assert rig.metrics.counts == Counter({("a", "running", False): 3, ("a", "queued", False): 3})
    rig.assert_one_event_and_metric_each()
    # Claimable at once by the next replica.
    assert len(rig.store.claim(app_id="a", owner="next", limit=5, lease_s=30, max_in_flight=5)) == 3


def test_release_all_writes_a_result_in_hand_first():
    class SlowComplete:
        def __init__(self, store):
            self.store = store

        def __getattr__(self, name):
            return getattr(self.store, name)

        async def acomplete(self, **kw):
            await asyncio.sleep(0.2)  # the result is being written as the router stops
            return await self.store.acomplete(**kw)

    async def go():
        rig = Rig(FakeBackend(), router={"lease_s": 60})
        rig.d.store = SlowComplete(rig.store)
        job_id = rig.submit()
        rig.d.start()
        await until(lambda: rig.backend.runs and rig.store.get(job_id).dispatched_at, what="the run to start")
        rig.backend.runs[0].succeed({"done": 1})
        await until(lambda: any(f.recording for f in rig.d.inflight.values()), what="the result to be in hand")
        n = await rig.d.release_all()
        return rig, n, rig.store.get(job_id)

    rig, n, job = run(go())
    assert n == 0 and job.status == S and job.result == {"done": 1}
    assert rig.statuses(job.id) == ["running", "succeeded"]


def test_refuse_fails_queued_jobs_with_no_capacity():
    async def go():
        rig = Rig(FakeBackend(), refuse=lambda model: f"model {model} fits on no GPU of this cluster")
        ids = [rig.submit() for _ in range(2)]
        async with started(rig):
            return rig, [await settled(rig, i) for i in ids]

    rig, jobs = run(go())
    assert all(j.status == F and j.error == "no capacity: model m fits on no GPU of this cluster" for j in jobs)
    assert rig.backend.runs == []
    assert all(rig.statuses(j.id) == ["failed"] for j in jobs)
    assert rig.metrics.counts == Counter({("a", "failed", False): 2})
    rig.assert_one_event_and_metric_each()


def test_a_closed_gate_keeps_jobs_queued():
    async def go():
        open_ = False
        rig = Rig(FakeBackend({"ok": 1}), gate=lambda model: open_)
        job_id = rig.submit()
        async with started(rig):
            await asyncio.sleep(0.1)
            before = rig.store.get(job_id).status
            open_ = True
            rig.d.poke()
            return before, await settled(rig, job_id)

    before, job = run(go())
    assert before == Q and job.status == S


def test_queued_jobs_of_an_unconfigured_app_fail_after_the_grace():
    async def go():
        rig = Rig(FakeBackend(), router={"unconfigured_app_grace_s": 0.2})
        gone = rig.submit(app="gone")
        async with started(rig):
            await asyncio.sleep(0.1)
            early = rig.store.get(gone).status
            rig.clock.advance(1)  # the job is older than the grace, by the store's clock too
            return rig, early, await settled(rig, gone, F)

    rig, early, job = run(go())
    assert early == Q and job.error == "app gone is no longer configured"
    assert rig.statuses(job.id) == ["failed"] and rig.metrics.counts == Counter({("gone", "failed", False): 1})


def test_a_store_outage_while_recording_keeps_the_result():
    class Flaky:
        def __init__(self, store, failures):
            self.store, self.failures, self.calls = store, failures, 0

        def __getattr__(self, name):
            return getattr(self.store, name)

        async def acomplete(self, **kw):
            self.calls += 1
            if self.calls <= self.failures:
                raise StoreUnavailable("the job store is unavailable (simulated outage)")
            return await self.store.acomplete(**kw)

    async def go():
        rig = Rig(FakeBackend({"kept": True}))
        flaky = rig.d.store = Flaky(rig.store, failures=3)
        job_id = rig.submit()
        async with started(rig):
            return rig, flaky, await settled(rig, job_id)

    rig, flaky, job = run(go())
    assert job.status == S and job.result == {"kept": True} and flaky.calls == 4 and len(rig.backend.runs) == 1
    assert rig.statuses(job.id) == ["running", "succeeded"]


def test_an_event_bus_outage_never_fails_a_job_and_metrics_still_count():
    async def go():
        rig = Rig(FakeBackend({"ok": 1}))
        rig.bus.down = True
        job_id = rig.submit()
        async with started(rig):
            return rig, await settled(rig, job_id)

    rig, job = run(go())
    assert job.status == S and rig.bus.published == []
    assert rig.metrics.counts == Counter({("a", "running", False): 1, ("a", "succeeded", False): 1})


@pytest.mark.parametrize("error", [KeyError("m"), RuntimeError("boom")])
def test_a_backend_that_lets_another_error_through_fails_the_attempt(error):
    class Broken:
        def run(self, job, attempt, **kw):
            raise error

    async def go():
        rig = Rig(Broken())  # type: ignore[arg-type]
        job_id = rig.submit(max_attempts=1)
        async with started(rig):
            return await settled(rig, job_id)

    job = run(go())
    assert job.status == F and job.error == f"{type(error).__name__}: {error}"


def test_a_result_the_store_cannot_keep_fails_the_job_once():
    rig = Rig(FakeBackend({"text": "a\x00b"}, {"text": "again"}))
    job = run_to_end(rig, max_attempts=3)
    assert job.status == F and job.attempts == 1 and len(rig.backend.runs) == 1  # a re-run would fail the same way
    assert job.error == "the result could not be stored: UntranslatableCharacter: unsupported Unicode escape sequence"
    assert rig.statuses(job.id) == ["running", "failed"]
    rig.assert_one_event_and_metric_each()


def test_a_lease_heartbeat_while_the_outcome_is_announced_does_not_cut_the_announce():
    """The completion's commit ends the lease; a heartbeat in the moment before its status event is
    out (a slow Redis) must not take the attempt for lost and cancel the announce: the terminal
    event and the log line are still due (a CI run lost both)."""
    class SlowTerminalEvent(MemoryEventBus):
        def __init__(self):
            super().__init__()
            self.gate = asyncio.Event()
            self.waiting = False

        async def publish_many(self, job_id, events, **kw):
            if any(data.get("status") == "succeeded" for _, data in events):
                self.waiting = True
                await self.gate.wait()
            return await super().publish_many(job_id, events, **kw)

    async def go():
        rig = Rig(FakeBackend({"done": 1}), router={"lease_s": 60})
        rig.bus = rig.d.transitions.events = SlowTerminalEvent()
        job_id = rig.submit()
        rig.d.start()
        await until(lambda: rig.bus.waiting, what="the success committed, its event on the way")
        await rig.d._maintain()  # the lease heartbeat: the job's lease went with its commit
        rig.bus.gate.set()
        job = await settled(rig, job_id)
        await stop(rig)
        return rig, job

    rig, job = run(go())
    assert job.status == S and rig.statuses(job.id) == ["running", "succeeded"]
    rig.assert_one_event_and_metric_each()
