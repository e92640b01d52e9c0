"""The pure side of the metrics: what the router's gauges read (service/gauges.py), the arbiter's
VRAM accounting per GPU in its snapshot, the submit-to-done time of a terminal transition and the
runs the dispatcher counts with their cost (CountingMetrics stands in for ray.serve.metrics)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest

from gpu_orchestrator.bus.decisions import Snapshot
from gpu_orchestrator.bus.memory import MemoryEventBus
from gpu_orchestrator.core.jobs import Job, JobStatus
from gpu_orchestrator.core.model_errors import ModelFailed
from gpu_orchestrator.core.policy_types import Decision, Gpu, ModelView
from gpu_orchestrator.service.arbiter.tracks import ModelTrack
from gpu_orchestrator.service.arbiter.views import decision_snapshot, gpu_vram
from gpu_orchestrator.service.gauges import MODEL_STATES, gpu_vram_readings, model_state_readings, queue_readings
from gpu_orchestrator.service.transitions import CountingMetrics, Transitions, submit_to_done_s
from gpu_orchestrator.store.base import AppQueueStats, Cost
from tests.unit.test_dispatcher import FakeBackend, Rig, settled, stop, until

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def job(status: JobStatus, *, created: dt.datetime = T0, finished: dt.datetime | None = None) -> Job:
    return Job(id=uuid.uuid4(), app_id="echo", status=status, priority=0, params={}, result=None, error=None,
               attempts=1, max_attempts=3, timeout_s=60, backend=None, idempotency_key=None, lease_owner=None,
               lease_expires_at=None, created_at=created, started_at=None, finished_at=finished)


# -- gauges ----------------------------------------------------------------------------------------

def test_queue_readings_give_every_app_a_depth_and_oldest_wait():
    stats = {"a": AppQueueStats("a", 3, 1, 12.5, 0), "b": AppQueueStats("b", 0, 2, None, None),
             "stale": AppQueueStats("stale", 0, 0, 40.0, None)}
    assert queue_readings(["a", "b", "c", "stale"], stats) == {
        "a": (3, 12.5), "b": (0, 0.0), "c": (0, 0.0),  # no stats yet: an empty queue
        "stale": (0, 0.0),  # nothing queued: no wait, whatever the age says
    }


def test_model_state_readings_set_one_state_per_model():
    got = model_state_readings({"sdxl": {"state": "resident"}, "llm": {"state": "cold"}, "w": {}})
    assert got["sdxl"] == {s: int(s == "resident") for s in MODEL_STATES}
    assert got["llm"]["cold"] == 1 and sum(got["llm"].values()) == 1
    assert got["w"]["cold"] == 1  # no state yet: cold
    # A state a newer leader reports is kept, beside the known ones at 0.
    new = model_state_readings({"m": {"state": "sleeping"}})["m"]
    assert new["sleeping"] == 1 and sum(new.values()) == 1 and set(MODEL_STATES) < set(new)


def test_gpu_vram_readings():
    assert gpu_vram_readings({"gpu0": {"vram_gb": 24, "held_gb": 16}, "gpu1": {}}) == {
        "gpu0": (16.0, 24.0), "gpu1": (0.0, 0.0)}


# -- the arbiter's VRAM accounting in its snapshot ------------------------------------------------------

def test_snapshot_counts_vram_held_per_gpu_like_the_policy():
    gpus = [Gpu("gpu0", 24), Gpu("gpu1", 80)]
    views = [
        ModelView("a", vram_gb=16, replicas=1, placement=("gpu0",)),
        ModelView("b", vram_gb=14, stopping=1, placement=("gpu0",)),  # stopping still holds memory
        ModelView("c", vram_gb=20, replicas=1, pending=1, placement=("gpu1", "gpu1")),
        ModelView("d", vram_gb=10),  # cold: nothing held
        ModelView("e", vram_gb=5, replicas=1, placement=("elsewhere",)),  # a pool not in the list
    ]
    assert gpu_vram(views, gpus) == {"gpu0": {"vram_gb": 24.0, "held_gb": 30.0},
                                     "gpu1": {"vram_gb": 80.0, "held_gb": 40.0}}
    d = Decision(targets={"a": 1, "c": 2}, placements={"a": ("gpu0",), "c": ("gpu1", "gpu1")}, draining=frozenset())
    snap = decision_snapshot(views, d, {v.name: ModelTrack() for v in views}, leader="r", now=1.0, gpus=gpus)
    assert snap.gpus["gpu0"] == {"vram_gb": 24.0, "held_gb": 30.0}
    again = Snapshot.from_json(snap.to_json())  # what followers read from the board
    assert again.gpus == snap.gpus and again.models["b"]["state"] == "stopping"  # giving its memory back
    # A snapshot from a leader that did not have the field yet: no GPUs.
    assert Snapshot.from_json('{"ts": 1, "leader": "r", "targets": {}, "dispatchable": [], "draining": [], '
                              '"reasons": []}').gpus == {}


# -- submit to done ---------------------------------------------------------------------------------

def test_submit_to_done_is_the_rows_created_to_finished():
    done = job(JobStatus.succeeded, finished=T0 + dt.timedelta(seconds=7.5))
    assert submit_to_done_s(done, JobStatus.succeeded) == 7.5
    assert submit_to_done_s(None, JobStatus.succeeded) is None  # the caller had no row
    assert submit_to_done_s(done, JobStatus.failed) is None  # not the row of this transition
    assert submit_to_done_s(job(JobStatus.queued), JobStatus.queued) is None  # not terminal (a retry)
    assert submit_to_done_s(job(JobStatus.failed), JobStatus.failed) is None  # no finished_at
    skewed = job(JobStatus.cancelled, finished=T0 - dt.timedelta(seconds=1))
    assert submit_to_done_s(skewed, JobStatus.cancelled) == 0.0


class BrokenMetrics(CountingMetrics):
    def ran(self, *a, **kw):
        raise RuntimeError("metrics backend down")


def test_transitions_time_terminal_transitions_and_count_runs():
    m = CountingMetrics()
    t = Transitions(MemoryEventBus(), m)
    done = job(JobStatus.succeeded, finished=T0 + dt.timedelta(seconds=3))

    async def go():
        await t.announce(done.id, "echo", JobStatus.queued, new=True)
        await t.announce(done.id, "echo", JobStatus.succeeded, row=done)

    asyncio.run(go())
    assert m.done_s == {("echo", "succeeded"): [3.0]}
    assert m.total() == 2
    t.ran("echo", "replicate", JobStatus.succeeded, Cost(0.5, 0.01, {}))
    t.ran("echo", "local", JobStatus.failed, None)
    assert m.runs == {("echo", "replicate", "succeeded"): 1, ("echo", "local", "failed"): 1}
    assert m.usd[("echo", "replicate")] == pytest.approx(0.01) and m.gpu_seconds[("echo", "replicate")] == 0.5
    Transitions(MemoryEventBus(), BrokenMetrics()).ran("echo", "local", JobStatus.succeeded)  # never raises


def test_dispatcher_times_the_job_and_counts_each_run_where_it_ran_with_its_cost():
    async def go():
        backend = FakeBackend(ModelFailed.of(RuntimeError("first try")), FakeBackend.HANG)
        rig = Rig(backend)
        rig.cfg.models["m"].num_gpus = 0.5  # a local run costs its GPU share x the GPU's rate
        job_id = rig.submit(max_attempts=2)
        rig.clock.advance(7)  # it waited 7 s in the queue before the dispatcher starts
        rig.d.start()
        try:
            await until(lambda: len(backend.runs) == 2, what="two runs")
            await asyncio.sleep(0.1)  # the second run takes a moment of its GPU share
            backend.runs[1].succeed({"ok": 1})
            job = await settled(rig, job_id)
        finally:
            await stop(rig)
        return rig, job

    rig, done = asyncio.run(asyncio.wait_for(go(), 30))
    assert done.status == JobStatus.succeeded
    assert rig.metrics.runs == {("a", "local", "failed"): 1, ("a", "local", "succeeded"): 1}
    (seconds,) = rig.metrics.done_s[("a", "succeeded")]
    assert seconds == pytest.approx((done.finished_at - done.created_at).total_seconds()) and seconds >= 7
    assert rig.metrics.gpu_seconds[("a", "local")] == pytest.approx(done.gpu_seconds) and done.gpu_seconds > 0.04
    assert rig.metrics.usd[("a", "local")] == pytest.approx(done.cost_usd) and done.cost_usd > 0


# -- ServeMetrics: counter increments reach Ray added up ------------------------------------------

def test_counter_increments_reach_ray_added_up_at_most_once_a_second(monkeypatch):
    import sys
    import types

    calls: list[tuple[str, float, dict]] = []

    class Metric:
        def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] = (), **kw):
            self.name = name

        def inc(self, value: float = 1.0, tags: dict | None = None):
            calls.append((self.name, value, tags))

        def observe(self, value: float, tags: dict | None = None):
            calls.append((self.name, value, tags))

        def set(self, value: float, tags: dict | None = None):
            calls.append((self.name, value, tags))

    fake = types.ModuleType("ray.serve")
    fake.metrics = types.SimpleNamespace(Counter=Metric, Gauge=Metric, Histogram=Metric)
    monkeypatch.setitem(sys.modules, "ray.serve", fake)
    from gpu_orchestrator.serve.metrics import ServeMetrics

    m = ServeMetrics()
    for _ in range(3):  # three jobs: submitted, running, succeeded with its time, one run that cost
        m.transition("echo", JobStatus.queued, new=True)
        m.transition("echo", JobStatus.running)
        m.transition("echo", JobStatus.succeeded, seconds=0.2)
        m.ran("echo", "local:echo", JobStatus.succeeded, usd=0.001, gpu_seconds=0.5)
    # Within the second: only the histogram's observations went to Ray (they cannot be added up).
    assert [c[0] for c in calls] == ["gpu_orch_job_submit_to_done_seconds"] * 3
    calls.clear()
    m.flush()
    got = {(name, tuple(sorted(tags.items()))): value for name, value, tags in calls}
    assert got == {
        ("gpu_orch_job_transitions", (("app_id", "echo"), ("status", "queued"))): 3,
        ("gpu_orch_job_transitions", (("app_id", "echo"), ("status", "running"))): 3,
        ("gpu_orch_job_transitions", (("app_id", "echo"), ("status", "succeeded"))): 3,
        ("gpu_orch_jobs_submitted", (("app_id", "echo"),)): 3,
        ("gpu_orch_jobs_succeeded", (("app_id", "echo"),)): 3,
        ("gpu_orch_runs", (("app_id", "echo"), ("backend", "local:echo"), ("outcome", "succeeded"))): 3,
        ("gpu_orch_cost_usd", (("app_id", "echo"), ("backend", "local:echo"))): pytest.approx(0.003),
        ("gpu_orch_gpu_seconds", (("app_id", "echo"), ("backend", "local:echo"))): 1.5,
    }
    calls.clear()
    m.flush()
    assert calls == []  # nothing counted twice
    m._flushed_at -= ServeMetrics.FLUSH_EVERY_S  # a second later, the next increment flushes on its own
    m.transition("echo", JobStatus.queued, new=True)
    assert calls == [("gpu_orch_job_transitions", 1, {"app_id": "echo", "status": "queued"})]
