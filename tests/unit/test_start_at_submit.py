"""A job accepted by a replica whose dispatcher has a free slot for its app starts in the same
transaction as its insert and runs here; a caller waiting on this replica gets its outcome in
process. JobService and the Dispatcher wired as the router wires them, on the memory store and
bus and a fake model backend (tests/unit/test_dispatcher.py's)."""

from __future__ import annotations

import asyncio
from typing import Any

from gpu_orchestrator.core.jobs import JobStatus
from gpu_orchestrator.core.model_errors import ModelFailed
from gpu_orchestrator.service.jobs import JobService
from tests.helpers import until
from tests.unit.test_dispatcher import FakeBackend, Rig, run, started

Q, R, S, F = JobStatus.queued, JobStatus.running, JobStatus.succeeded, JobStatus.failed


class Counted:
    """Counts calls of the named methods of `inner` and passes them on."""

    def __init__(self, inner: Any, *names: str):
        self.inner, self.calls = inner, {n: 0 for n in names}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.calls:
            return attr

        def counted(*a: Any, **kw: Any) -> Any:
            self.calls[name] += 1
            return attr(*a, **kw)
        return counted


def wired(backend: FakeBackend, **app: Any) -> tuple[Rig, JobService]:
    rig = Rig(backend, app=app, router={"poll_interval_s": 0.05})
    rig.store = Counted(rig.store, "get", "claim", "mark_dispatched")
    rig.d.store = rig.store
    rig.bus = Counted(rig.bus, "tail")
    svc = JobService(cfg=rig.cfg, store=rig.store, events=rig.bus, transitions=rig.d.transitions, deployed={"m"},
                     runner=rig.d, on_submitted=lambda job: job.status == Q and rig.d.poke(job.app_id, job.route))
    return rig, svc


def test_an_accepted_job_starts_in_its_insert_and_its_waiter_hears_the_outcome_in_process():
    rig, svc = wired(FakeBackend({"ok": 1}, {"ok": 2}, {"ok": 3}))

    async def go():
        async with started(rig):
            for i in range(3):
                job, created = await svc.submit("a", {})
                assert created and job.status == R and job.claims == 1  # no claim, no separate dispatch mark
                done = await svc.wait(job.id, 10)
                assert done.status == S and done.result == {"ok": i + 1}
            # The status events still go out, after the waiter has its answer (for SSE and callers on
            # other replicas).
            await until(lambda: len(rig.bus.inner.statuses(job.id)) == 3, what="the last job's status events")
            assert rig.bus.inner.statuses(job.id) == ["queued", "running", "succeeded"]
        # No claim, no dispatch mark, no read of the row and no event read for any of them.
        assert rig.store.calls == {"get": 0, "claim": 0, "mark_dispatched": 0}
        assert rig.bus.calls["tail"] == 0

    run(go())


def test_with_the_slots_taken_a_job_queues_and_a_freed_slot_claims_it():
    rig, svc = wired(FakeBackend(FakeBackend.HANG), max_in_flight=1)

    async def go():
        async with started(rig):
            first, _ = await svc.submit("a", {})
            second, _ = await svc.submit("a", {})
            assert (first.status, second.status) == (R, Q)
            await until(lambda: rig.backend.runs, what="the first job on the model")
            rig.backend.runs[0].succeed({"ok": 1})
            await until(lambda: len(rig.backend.runs) == 2, what="the queued job claimed when the slot freed")
            rig.backend.runs[1].succeed({"ok": 2})
            done = await svc.wait(second.id, 10)  # claimed, not started at submit: heard through its events
            assert done.status == S and done.result == {"ok": 2}
            assert rig.store.calls["claim"] >= 1

    run(go())


def test_a_retried_failure_and_a_cancel_reach_the_waiter_through_the_store():
    rig, svc = wired(FakeBackend(ModelFailed("flaky", "RuntimeError"), {"ok": 2}, FakeBackend.HANG))

    async def go():
        async with started(rig):
            job, _ = await svc.submit("a", {})
            done = await svc.wait(job.id, 10)  # attempt 1 failed and was queued again: not the outcome
            assert done.status == S and done.result == {"ok": 2} and done.claims == 2
            hung, _ = await svc.submit("a", {})
            waiting = asyncio.ensure_future(svc.wait(hung.id, 10))
            await until(lambda: len(rig.backend.runs) == 3, what="the second job on the model")
            await svc.cancel(hung.id)
            assert (await waiting).status == JobStatus.cancelled

    run(go())


def test_no_start_at_submit_while_the_arbiter_holds_the_model_back():
    rig, svc = wired(FakeBackend({"ok": 1}))
    rig.d.gate = lambda model: False

    async def go():
        async with started(rig):
            job, _ = await svc.submit("a", {})
            assert job.status == Q
            rig.d.gate = lambda model: True
            rig.d.poke()
            assert (await svc.wait(job.id, 10)).status == S

    run(go())


def test_the_model_gets_a_started_job_while_its_start_is_announced_and_the_stream_keeps_its_order():
    """The start's status events are published while the model runs the job, not before it gets it;
    the waiter here hears the outcome at once, and the outcome's event still follows the start's."""
    rig, svc = wired(FakeBackend(FakeBackend.HANG))
    bus = rig.bus.inner
    publish_many = bus.publish_many

    async def go():
        held = asyncio.Event()

        async def slow_start(job_id, events, **kw):  # Redis slow to take the start's two events
            if any(data.get("status") == "running" for _, data in events):
                await held.wait()
            return await publish_many(job_id, events, **kw)

        bus.publish_many = slow_start
        async with started(rig):
            job, _ = await svc.submit("a", {})
            await until(lambda: rig.backend.runs, what="the job on the model")
            assert bus.statuses(job.id) == []  # the model has it; its start is still being published
            rig.backend.runs[0].succeed({"ok": 1})
            assert (await svc.wait(job.id, 10)).status == S  # in process: not held up by the events
            assert bus.statuses(job.id) == []  # the outcome's event waits for the start's
            held.set()
            await until(lambda: len(bus.statuses(job.id)) == 3, what="the job's status events")
            assert bus.statuses(job.id) == ["queued", "running", "succeeded"]

    run(go())
