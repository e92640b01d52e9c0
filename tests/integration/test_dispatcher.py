"""The dispatcher's failure paths, on a real JobStore (Postgres) and a real event bus (Redis).

The one stand-in is the model backend: `Backend.run(...)` runs a real ModelDeployment in this
process and returns an awaitable with `.cancel()`, as serve.backend.ServeBackend does over a handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from gpu_orchestrator.models.base import JobContext, JobTimeout, ModelDeployment, SlotTimeout
from gpu_orchestrator.service.backends import InProcessBackend, StartedRun
from gpu_orchestrator.service.dispatcher import Dispatcher
from gpu_orchestrator.service.transitions import Transitions
from gpu_orchestrator.models.echo import Echo
from gpu_orchestrator.core.config import parse_config
from gpu_orchestrator.bus.events import AsyncEventBus, EventBus
from gpu_orchestrator.core.jobs import JobStatus, RetryPolicy
from tests.helpers import until

DEAD_REDIS = "redis://127.0.0.1:1"


class Backend:
    """An in-process model backend whose runs go round-robin over the model replicas given, each
    run a task in this loop (a Serve handle's call, without Ray)."""

    def __init__(self, model: ModelDeployment | list[ModelDeployment]):
        self.replicas = model if isinstance(model, list) else [model]
        self.runs: list[StartedRun] = []

    def run(self, job, attempt: int, *, timeout_s: float, queue_timeout_s: float) -> StartedRun:
        replica = self.replicas[len(self.runs) % len(self.replicas)]
        run = InProcessBackend(replica).run(job, attempt, timeout_s=timeout_s, queue_timeout_s=queue_timeout_s)
        self.runs.append(run)
        return run


class Gate(ModelDeployment):
    """Each attempt waits until the test lets it finish; returns which attempt ran."""

    model_name = "gate"

    def __init__(self, **kw: Any):
        self.started: list[int] = []
        self.open: dict[int, asyncio.Event] = {}
        super().__init__(**kw)

    async def infer(self, params: dict[str, Any], ctx: JobContext) -> Any:
        self.started.append(ctx.attempt)
        gate = self.open.setdefault(ctx.attempt, asyncio.Event())
        if params.get("hang"):
            await asyncio.Event().wait()
        await gate.wait()
        return {"attempt": ctx.attempt}


class Sleeper(ModelDeployment):
    """One job at a time (like whisper or a diffusers pipeline); each sleeps params['s']."""

    model_name = "sleeper"
    max_concurrent = 1

    def __init__(self, **kw: Any):
        self.ran: list[tuple[float, float]] = []
        super().__init__(**kw)

    async def infer(self, params: dict[str, Any], ctx: JobContext) -> Any:
        t0 = time.monotonic()
        await asyncio.sleep(params["s"])
        self.ran.append((t0, time.monotonic()))
        return {"slept": params["s"]}


class FailFirst(ModelDeployment):
    model_name = "failfirst"

    def __init__(self, **kw: Any):
        self.started_at: dict[int, dt.datetime] = {}
        super().__init__(**kw)

    def infer(self, params: dict[str, Any], ctx: JobContext) -> Any:
        self.started_at[ctx.attempt] = dt.datetime.now(dt.timezone.utc)
        if ctx.attempt == 1:
            raise RuntimeError("out of memory (first try)")
        return {"attempt": ctx.attempt}


def make_dispatcher(store, bus, model, *, owner="router-1", app: dict | None = None, **router) -> Dispatcher:
    cfg = parse_config({
        "apps": [{"id": "a", "deployment": "m", "max_attempts": 2, "timeout_s": 30, "max_in_flight": 4, **(app or {})}],
        "models": {"m": {"impl": "deployments.echo:Echo"}},
        "router": {"lease_s": 1.0, "poll_interval_s": 0.05, "retry_backoff_s": 0.0, **router},
    })
    return Dispatcher(cfg=cfg, store=store, transitions=Transitions(bus), backends={"m": Backend(model)}, owner=owner)


def submit(store, app="a", max_attempts=2, **params) -> uuid.UUID:
    job, _ = store.submit(app_id=app, params=params, max_attempts=max_attempts, timeout_s=30)
    return job.id



async def status_in(store, job_id, *statuses: JobStatus, timeout_s: float = 15.0):
    async def check():
        job = await asyncio.to_thread(store.get, job_id)
        return job if job.status in statuses else None
    return await until(check, timeout_s, f"job {job_id} to be {[s.value for s in statuses]}")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


async def shutdown(*ds: Dispatcher):
    for d in ds:
        await d.stop()
        for f in list(d.inflight.values()):
            if f.task:
                f.task.cancel()
    await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def started(*ds: Dispatcher):
    """The dispatchers running for the block, shut down after it however the block ends."""
    for d in ds:
        d.start()
    try:
        yield
    finally:
        await shutdown(*ds)


async def published(redis_url, job_id, status: str) -> None:
    """Until the job's last status event is `status`: the event follows the transition's commit
    (a row already terminal may not have announced it yet)."""
    await until(lambda: statuses_published(redis_url, job_id)[-1:] == [status], what=f"the {status} event")


def statuses_published(redis_url, job_id) -> list[str]:
    bus = EventBus(redis_url)
    try:
        return [e.data["status"] for e in bus.read(job_id) if e.type == "status"]
    finally:
        bus.close()


class FlakyComplete:
    """The real store, whose first `failures` completions hit a dropped connection (as asyncpg, the
    completion's driver, reports one)."""

    def __init__(self, store, failures: int):
        self.store, self.failures, self.calls = store, failures, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    async def acomplete(self, **kw):
        import asyncpg

        self.calls += 1
        if self.calls <= self.failures:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return await self.store.acomplete(**kw)


def test_db_error_while_recording_success_keeps_the_result(store, redis_url):
    async def go():
        model = Echo()
        flaky = FlakyComplete(store, failures=4)  # retries span ~3 s, three leases
        d = make_dispatcher(flaky, AsyncEventBus(redis_url), model)
        job_id = submit(store, message="hi")
        async with started(d):
            job = await status_in(store, job_id, JobStatus.succeeded, JobStatus.failed, timeout_s=30)
            await published(redis_url, job_id, "succeeded")
        return job, flaky.calls, len(d.backends["m"].runs)

    job, complete_calls, runs = run(go())
    assert job.status == JobStatus.succeeded and job.result["echo"] == {"message": "hi"}
    assert complete_calls == 5 and runs == 1  # the result landed on the 5th write; the job ran once
    assert (job.attempts, job.claims, job.lost_attempts) == (1, 1, 0)


def test_two_attempts_of_one_job_on_one_router_never_both_record(store, redis_url):
    async def go():
        model, other = Gate(), Gate()  # two replicas: attempt 2 lands on the other one and really starts
        other.started, other.open = model.started, model.open
        d = make_dispatcher(store, AsyncEventBus(redis_url), [model, other])
        job_id = submit(store)
        async with started(d):
            await until(lambda: model.started == [1], what="attempt 1 to start")
            # Postgres was away longer than the lease: another router's rescue re-queued the job.
            for _ in range(50):
                with store.engine.begin() as c:
                    c.execute(sa.text("UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
                              {"id": job_id})
                if store.rescue_expired(RetryPolicy(backoff_s=0.0)):
                    break
            # This router claims it again while attempt 1 still runs here.
            await until(lambda: model.started == [1, 2], what="attempt 2 to start")
            first, second = d.backends["m"].runs
            await until(lambda: first.cancelled, timeout_s=5, what="attempt 1's request to be cancelled")
            await until(lambda: set(d.inflight) == {(job_id, 2)}, timeout_s=5, what="only attempt 2 held")
            assert not second.cancelled
            model.open.setdefault(1, asyncio.Event()).set()
            await asyncio.sleep(1.5)  # longer than the lease: attempt 2 keeps its lease
            assert (await asyncio.to_thread(store.get, job_id)).status == JobStatus.running
            model.open.setdefault(2, asyncio.Event()).set()
            return await status_in(store, job_id, JobStatus.succeeded, JobStatus.failed)

    job = run(go())
    assert job.status == JobStatus.succeeded and job.result == {"attempt": 2}
    assert (job.attempts, job.claims, job.lost_attempts) == (1, 2, 1)
    assert [(e["attempt"], e["kind"]) for e in job.errors] == [(1, "lost")]


def test_a_rescued_job_sent_to_the_replica_still_running_it_does_not_run_twice(store, redis_url):
    async def go():
        model = Gate()
        dead = make_dispatcher(store, AsyncEventBus(redis_url), model, owner="router-that-dies")
        job_id = submit(store)
        dead.start()
        await until(lambda: model.started == [1], what="attempt 1 to start")
        dead._task.cancel()  # the router dies: no heartbeats, no result recorded; its model call goes on
        dead.inflight.clear()
        d = make_dispatcher(store, AsyncEventBus(redis_url), model, owner="router-2")
        async with started(d):
            await until(lambda: (job_id, 2) in d.inflight, what="the rescued job to be claimed again")
            model.open.setdefault(1, asyncio.Event()).set()
            return await status_in(store, job_id, JobStatus.succeeded, JobStatus.failed)

    job = run(go())
    assert job.status == JobStatus.succeeded and job.result == {"attempt": 1}
    assert (job.attempts, job.claims, job.lost_attempts) == (1, 2, 1)


def test_a_claim_never_dispatched_goes_back_without_using_an_attempt(store, redis_url):
    async def go():
        job_id = submit(store, max_attempts=1)
        (claimed,) = store.claim(app_id="a", owner="router-that-died", limit=1, lease_s=0.3, max_in_flight=4)
        d = make_dispatcher(store, AsyncEventBus(redis_url), Echo())
        async with started(d):
            return await status_in(store, job_id, JobStatus.succeeded, JobStatus.failed)

    job = run(go())
    # max_attempts 1: before, the rescue used up the only attempt and the job failed unrun.
    assert job.status == JobStatus.succeeded
    assert (job.attempts, job.claims, job.lost_attempts) == (1, 2, 0)
    assert job.errors[0]["kind"] == "not_dispatched" and job.errors[0]["attempt"] == 1


def test_lost_routers_cost_no_attempt_and_a_poison_job_fails_with_the_reason(store, redis_url):
    async def go():
        job_id = submit(store, hang=True, max_attempts=1)
        model = Gate()
        replicas = [Gate() for _ in range(3)]  # each run on another replica (one would re-attach)
        for r in replicas:
            r.started, r.open = model.started, model.open
        routers = [make_dispatcher(store, AsyncEventBus(redis_url), replicas[i], owner=f"router-{i}", max_lost_attempts=2)
                   for i in range(3)]
        try:
            for i, d in enumerate(routers[:2]):
                d.start()
                await until(lambda: len(model.started) == i + 1, what=f"run {i + 1} to start")
                d._task.cancel()  # the router dies with the job on the model: no heartbeat, no release
            routers[2].start()
            return await status_in(store, job_id, JobStatus.failed, JobStatus.succeeded)
        finally:
            await shutdown(*routers)

    job = run(go())
    assert job.status == JobStatus.failed and job.attempts == 0 and job.lost_attempts == 2
    assert job.error.startswith("lost its router 2 times")
    assert [e["kind"] for e in job.errors] == ["lost", "lost"]


def test_release_all_hands_every_job_back_at_once(store, redis_url):
    async def go():
        ids = [submit(store, hang=True) for _ in range(3)]
        model = Gate()
        leaving = make_dispatcher(store, AsyncEventBus(redis_url), model, owner="leaving", lease_s=60)
        leaving.start()
        await until(lambda: len(model.started) == 3, what="3 runs to start")
        t0 = time.monotonic()
        n = await leaving.release_all()
        took = time.monotonic() - t0
        jobs = [await asyncio.to_thread(store.get, i) for i in ids]
        responses = leaving.backends["m"].runs
        return n, took, jobs, responses, ids

    n, took, jobs, responses, ids = run(go())
    assert n == 3 and took < 5  # not the 60 s lease
    assert all(j.status == JobStatus.queued and j.lease_owner is None for j in jobs)
    assert all((j.attempts, j.lost_attempts) == (0, 1) and j.errors[-1]["kind"] == "released" for j in jobs)
    assert all(r.cancelled for r in responses)
    assert all(statuses_published(redis_url, i)[-1] == "queued" for i in ids)
    # Claimable at once by the next replica.
    assert len(store.claim(app_id="a", owner="next", limit=5, lease_s=30, max_in_flight=5)) == 3


def test_a_failed_attempt_is_retried_after_a_backoff_and_its_error_kept(store, redis_url):
    async def go():
        model = FailFirst()
        d = make_dispatcher(store, AsyncEventBus(redis_url), model, retry_backoff_s=1.0)
        job_id = submit(store)
        async with started(d):
            return await status_in(store, job_id, JobStatus.succeeded, JobStatus.failed), model.started_at

    job, started_at = run(go())
    assert job.status == JobStatus.succeeded and job.result == {"attempt": 2} and job.error is None
    (err,) = job.to_api()["errors"]
    assert err["attempt"] == 1 and err["kind"] == "error" and err["error"] == "RuntimeError: out of memory (first try)"
    failed_at = dt.datetime.fromisoformat(err["at"])
    assert (started_at[2] - failed_at).total_seconds() >= 0.45  # jitter keeps it within [0.5, 1] s


def test_queued_jobs_of_a_removed_app_fail_after_the_grace(store, redis_url):
    async def go():
        gone = submit(store, app="gone")
        d = make_dispatcher(store, AsyncEventBus(redis_url), Echo(), unconfigured_app_grace_s=1.0)
        async with started(d):
            job = await status_in(store, gone, JobStatus.failed, timeout_s=10)
            await published(redis_url, gone, "failed")
            return job

    job = run(go())
    # Not before the grace (its clock: the job's age in the database, whatever the load here).
    assert (job.finished_at - job.created_at).total_seconds() >= 1.0
    assert job.error == "app gone is no longer configured" and job.finished_at is not None


def test_one_at_a_time_model_jobs_time_their_work_not_their_wait(store, redis_url):
    async def go():
        model = Sleeper()
        # Each job needs 0.4 s of a 1 s timeout; the 4th waits 1.2 s for the replica's one slot.
        d = make_dispatcher(store, AsyncEventBus(redis_url), model, app={"timeout_s": 1.0})
        ids = [store.submit(app_id="a", params={"s": 0.4}, max_attempts=1, timeout_s=1.0)[0].id for _ in range(4)]
        async with started(d):
            return [await status_in(store, i, JobStatus.succeeded, JobStatus.failed) for i in ids]

    jobs = run(go())
    assert [j.status for j in jobs] == [JobStatus.succeeded] * 4, [j.error for j in jobs]


def test_model_run_times_the_work_and_bounds_the_slot_wait():
    async def go():
        model = Sleeper()
        first = asyncio.ensure_future(model.run("j1", {"s": 0.6}, 1, timeout_s=1.0))
        await asyncio.sleep(0.05)
        # Waits 0.55 s for the slot, longer than its 0.3 s timeout, and still succeeds.
        second = await model.run("j2", {"s": 0.1}, 1, timeout_s=0.3, queue_timeout_s=5)
        assert (await first) == {"slept": 0.6} and second == {"slept": 0.1}
        with pytest.raises(JobTimeout, match=r"timed out after 0.2 s"):
            await model.run("j3", {"s": 5}, 1, timeout_s=0.2)
        blocker = asyncio.ensure_future(model.run("j4", {"s": 0.5}, 1))
        await asyncio.sleep(0.05)
        with pytest.raises(SlotTimeout, match=r"waited 0.1 s for a free replica slot"):
            await model.run("j5", {"s": 0.1}, 1, timeout_s=5, queue_timeout_s=0.1)
        await blocker
        # Old positional calls still work, and the slot was never leaked.
        assert await model.run("j6", {"s": 0.0}, 2) == {"slept": 0.0}
        assert model._slots._value == 1

    run(go())


def test_redis_down_never_fails_a_job(store, redis_url):
    async def go():
        model = Echo(redis_url=DEAD_REDIS)  # progress and cancel checks hit a dead Redis
        d = make_dispatcher(store, AsyncEventBus(DEAD_REDIS), model)  # and so do status events
        job_id = submit(store, steps=4, delay_s=0.2)
        async with started(d):
            return await status_in(store, job_id, JobStatus.succeeded, JobStatus.failed)

    job = run(go())
    assert job.status == JobStatus.succeeded and job.attempts == 1 and job.errors == ()
    assert job.result["echo"] == {"steps": 4, "delay_s": 0.2}


def test_a_cancel_reaches_the_model_with_redis_down(store, redis_url):
    async def go():
        model = Echo(redis_url=DEAD_REDIS)  # the model cannot see the cancel flag
        d = make_dispatcher(store, AsyncEventBus(redis_url), model)
        job_id = submit(store, steps=100, delay_s=20)
        async with started(d):
            await until(lambda: model.busy == 1, what="the job to start")
            await asyncio.to_thread(store.cancel, job_id)  # what DELETE /v1/jobs/{id} does
            # The lost lease tells the router, which cancels the model's request.
            await until(lambda: model.busy == 0, timeout_s=5, what="the model to stop")
            return d.backends["m"].runs[0].cancelled, await asyncio.to_thread(store.get, job_id)

    cancelled, job = run(go())
    assert cancelled and job.status == JobStatus.cancelled


class Unstorable(ModelDeployment):
    model_name = "unstorable"

    def infer(self, params: dict[str, Any], ctx: JobContext) -> Any:
        return {"text": "a\x00b"}  # Postgres jsonb cannot hold U+0000


def test_a_result_postgres_cannot_store_fails_the_job_once(store, redis_url):
    async def go():
        d = make_dispatcher(store, AsyncEventBus(redis_url), Unstorable())
        job_id = submit(store, max_attempts=3)
        async with started(d):
            return await status_in(store, job_id, JobStatus.failed, JobStatus.succeeded)

    job = run(go())
    assert job.status == JobStatus.failed and job.attempts == 1  # a re-run would fail the same way
    assert job.error.startswith("the result could not be stored: UntranslatableCharacter: unsupported Unicode")


class UnstorableError(ModelDeployment):
    model_name = "unstorable-error"

    def infer(self, params: dict[str, Any], ctx: JobContext) -> Any:
        raise RuntimeError("bad\x00byte \ud800 here")  # text Postgres cannot hold, in the error


def test_an_error_message_postgres_cannot_store_is_still_recorded(store, redis_url):
    async def go():
        d = make_dispatcher(store, AsyncEventBus(redis_url), UnstorableError())
        job_id = submit(store, max_attempts=1)
        async with started(d):
            return await status_in(store, job_id, JobStatus.failed, JobStatus.succeeded)

    job = run(go())
    assert job.status == JobStatus.failed and job.lost_attempts == 0  # recorded, not lost with its task
    assert job.error == "RuntimeError: bad\\0byte \\ud800 here"
