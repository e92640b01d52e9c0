"""Cloud runs through the dispatcher without a network: a MemoryJobStore, the in-memory bus and an
in-process provider (the contract with Replicate's and Modal's real APIs is tested in
tests/integration/test_cloud_*.py). What these pin down: no run the provider started is left
billing after its job ends (cancelled mid-create, the provider unreachable on the last attempt, a
cancelled job whose run no router waits on), queued jobs never wait for a backend this stack cannot
use, and queued jobs move to the fallback only when it takes them."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from gpu_orchestrator.bus.memory import MemoryEventBus
from gpu_orchestrator.core.config import parse_config
from gpu_orchestrator.core.jobs import JobStatus
from gpu_orchestrator.service.cloud.backend import CloudBackend, Poll, Transient
from gpu_orchestrator.service.dispatcher import Dispatcher
from gpu_orchestrator.service.transitions import CountingMetrics, Transitions
from gpu_orchestrator.store.memory import MemoryJobStore
from tests.unit.test_dispatcher import FakeBackend, run, until

Q, R, S, F, C = JobStatus.queued, JobStatus.running, JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled
TARGET = {"backend": "modal", "app": "gpu-orchestrator", "cls": "Echo", "method": "run", "gpu": "L4",
          "poll_interval_s": 0.01, "call_timeout_s": 1}


class Provider:
    """Modal-shaped provider in memory: runs go as `state` says; every call is recorded."""

    name = "modal"

    def __init__(self):
        self.created: list[str] = []
        self.cancelled: list[str] = []
        self.state = "running"  # what a poll answers for a run not cancelled
        self.create_delay_s = 0.0
        self.down = False  # every poll fails as a 503
        self.why: str | None = None

    def unavailable(self) -> str | None:
        return self.why

    async def create(self, r, inputs, files) -> str:
        await asyncio.sleep(self.create_delay_s)
        run_id = f"fc-{len(self.created)}"
        self.created.append(run_id)
        return run_id

    async def poll(self, r, run_id: str) -> Poll:
        if self.down:
            raise Transient("HTTP 503")
        if run_id in self.cancelled:
            return Poll("canceled")
        return Poll(self.state, output={"echo": run_id} if self.state == "succeeded" else None)

    async def cancel(self, r, run_id: str) -> None:
        self.cancelled.append(run_id)

    async def fetch(self, url: str):
        raise AssertionError("no files here")


class CloudRig:
    def __init__(self, *, apps: list[dict], refuse=None, failing=None, grace_s: float = 300.0):
        self.cfg = parse_config({
            "apps": apps,
            "models": {"m": {"impl": "deployments.echo:Echo"}},
            "router": {"lease_s": 0.3, "poll_interval_s": 0.01, "retry_backoff_s": 0.0,
                       "unconfigured_app_grace_s": grace_s},
        })
        self.store = MemoryJobStore()
        self.bus = MemoryEventBus()
        self.provider = Provider()
        self.local = FakeBackend()
        self.cloud = CloudBackend(self.provider, apps=self.cfg.apps, costs=self.cfg.costs, artifacts=None)
        self.cloud.BACKOFF_S = (0.01, 0.02)
        self.d = Dispatcher(cfg=self.cfg, store=self.store, transitions=Transitions(self.bus, CountingMetrics()),
                            backends={"m": self.local}, owner="router-1", cloud={"modal": self.cloud},
                            refuse=refuse, failing=failing)
        self.d.WRITE_BACKOFF_S = (0.01, 0.05)

    def submit(self, app: str, route: str | None = None, max_attempts: int = 1, **params: Any) -> uuid.UUID:
        job, _ = self.store.submit(app_id=app, params=params, max_attempts=max_attempts, timeout_s=30, route=route,
                                   route_reason="test" if route else None)
        return job.id

    async def stop(self) -> None:
        await self.d.stop()
        for f in list(self.d.inflight.values()):
            if f.task:
                f.task.cancel()
        await asyncio.sleep(0.05)


def cloud_only(**kw: Any) -> dict:
    return {"id": "c", "kind": "modal", "cloud": {**TARGET, **kw.pop("cloud", {})}, "timeout_s": 30,
            "parameters": [{"name": "x", "type": "integer", "default": 0}], **kw}


def with_fallback(**fb: Any) -> dict:
    return {"id": "a", "deployment": "m", "max_in_flight": 4,
            "parameters": [{"name": "x", "type": "integer", "default": 0},
                           {"name": "local_only", "type": "string"}],
            "fallback": {**TARGET, "when": "unplaceable", "inputs": {"x": "x", "local_only": None}, **fb}}


def test_a_cancel_while_the_create_is_on_its_way_cancels_the_run_it_started():
    async def go():
        rig = CloudRig(apps=[cloud_only()])
        rig.provider.create_delay_s = 0.3
        job_id = rig.submit("c", route="modal")
        rig.d.start()
        try:
            await until(lambda: rig.d.inflight, what="the job claimed")
            await asyncio.sleep(0.05)  # the create is in flight at the provider
            assert rig.provider.created == []
            rig.store.cancel(job_id)
            rig.d.cancel_local(job_id)  # what DELETE does on the router holding it
            await until(lambda: rig.provider.cancelled, what="the run cancelled once its id arrived")
        finally:
            await rig.stop()
        return rig, job_id

    rig, job_id = run(go())
    assert rig.provider.created == rig.provider.cancelled == ["fc-0"]
    assert rig.store.get(job_id).status == C


def test_the_provider_unreachable_on_the_last_attempt_fails_the_job_and_cancels_its_run():
    async def go():
        rig = CloudRig(apps=[cloud_only()])
        job_id = rig.submit("c", route="modal")
        rig.d.start()
        try:
            await until(lambda: rig.provider.created, what="the run created")
            rig.provider.down = True  # every poll now a 503: the run goes on there, we cannot see it
            job = await until(lambda: (j := rig.store.get(job_id)).status == F and j, what="the job failed")
            await until(lambda: rig.provider.cancelled, what="its run cancelled")
        finally:
            await rig.stop()
        return rig, job

    rig, job = run(go())
    assert job.errors[-1]["kind"] == "provider_unavailable" and "503" in job.error
    assert rig.provider.cancelled == ["fc-0"]


def test_a_timeout_records_what_the_run_cost_until_it_was_cancelled():
    async def go():
        rig = CloudRig(apps=[cloud_only(timeout_s=0.3)])
        job, _ = rig.store.submit(app_id="c", params={}, max_attempts=1, timeout_s=0.3, route="modal")
        rig.d.start()
        try:
            done = await until(lambda: (j := rig.store.get(job.id)).status == F and j, what="the job timed out")
        finally:
            await rig.stop()
        return rig, done

    rig, job = run(go())
    assert job.error == "timed out after 0.3 s on modal" and rig.provider.cancelled == ["fc-0"]
    assert job.gpu_seconds is not None and job.gpu_seconds >= 0.3
    assert job.cost_usd == round(job.gpu_seconds * rig.cfg.costs.modal_per_s["L4"], 8)
    assert job.usage["provider"] == "modal" and job.usage["gpu"] == "L4"


def test_a_job_cancelled_with_a_run_no_router_waits_on_cancels_that_run():
    async def go():
        rig = CloudRig(apps=[cloud_only()])
        job_id = rig.submit("c", route="modal")
        rig.d.start()
        try:
            await until(lambda: rig.store.get(job_id).cloud_ref, what="the run on the row")
            await rig.d.release_all()  # a graceful stop: the run goes on, the job is queued again
            assert rig.store.get(job_id).status == Q and rig.provider.cancelled == []
            job, prev = rig.store.cancel(job_id)
            assert prev == Q
            rig.d.cancel_detached(job)  # what JobService.cancel does for it
            await until(lambda: rig.provider.cancelled, what="the detached run cancelled")
        finally:
            await rig.stop()
        return rig

    rig = run(go())
    assert rig.provider.cancelled == ["fc-0"]


def test_a_graceful_stop_leaves_a_portable_run_going_and_stops_one_only_it_can_follow():
    async def go(portable: bool):
        rig = CloudRig(apps=[cloud_only()])
        rig.provider.portable = lambda run_id: portable  # a Modal endpoint call is not
        job_id = rig.submit("c", route="modal")
        rig.d.start()
        try:
            await until(lambda: rig.store.get(job_id).cloud_ref, what="the run on the row")
            await rig.d.release_all()
            await asyncio.sleep(0.05)
            return rig.provider.cancelled, rig.store.get(job_id).status
        finally:
            await rig.stop()

    assert run(go(True)) == ([], Q)  # the next claimer re-attaches to it
    assert run(go(False)) == (["fc-0"], Q)  # the next claimer starts a new one: this one must not bill on


def test_a_cloud_only_app_whose_backend_is_unavailable_fails_its_queued_jobs_after_the_grace():
    async def go():
        rig = CloudRig(apps=[cloud_only()], grace_s=0.2)
        rig.provider.why = "no MODAL_TOKEN_ID / MODAL_TOKEN_SECRET"
        rig.d.routing.unavailable["modal"] = rig.provider.why  # as a router started without the token
        job_id = rig.submit("c", route="modal")
        await asyncio.sleep(0.25)  # older than the grace
        rig.d.start()
        try:
            return await until(lambda: (j := rig.store.get(job_id)).status == F and j, timeout_s=10,
                               what="the stranded job failed")
        finally:
            await rig.stop()

    job = run(go())
    assert job.error == "app c runs on modal, which is unavailable here (no MODAL_TOKEN_ID / MODAL_TOKEN_SECRET)"


def test_jobs_sent_to_a_fallback_this_router_cannot_use_come_back_to_the_local_queue():
    async def go():
        rig = CloudRig(apps=[with_fallback()], grace_s=0.2)
        rig.d.routing.unavailable["modal"] = "no MODAL_TOKEN_ID / MODAL_TOKEN_SECRET"
        rig.local.outcomes = [{"ran": "locally"}]
        job_id = rig.submit("a", route="modal")
        await asyncio.sleep(0.25)
        rig.d.start()
        try:
            return await until(lambda: (j := rig.store.get(job_id)).status == S and j, timeout_s=10,
                               what="the job run locally"), rig
        finally:
            await rig.stop()

    job, rig = run(go())
    assert job.route is None and job.result == {"ran": "locally"} and rig.provider.created == []
    assert job.route_reason == "modal is unavailable here (no MODAL_TOKEN_ID / MODAL_TOKEN_SECRET): back to the local queue"
    told = [e.data for e in rig.bus.events(job.id, "progress")]
    assert told == [{"stage": job.route_reason, "backend": "local"}]  # its watchers hear it too


def test_only_jobs_the_fallback_takes_move_there_when_the_model_cannot_be_placed():
    async def go():
        rig = CloudRig(apps=[with_fallback()], refuse=lambda m: "needs 30 GB, largest GPU has 24 GB")
        rig.provider.state = "succeeded"
        taken = rig.submit("a", x=3)
        declined = rig.submit("a", x=4, local_only="yes")  # a param the fallback does not take
        rig.d.start()
        try:
            await until(lambda: all(rig.store.get(j).status.terminal for j in (taken, declined)), what="both ended")
        finally:
            await rig.stop()
        return rig, rig.store.get(taken), rig.store.get(declined)

    rig, taken, declined = run(go())
    assert taken.status == S and taken.route == "modal" and taken.route_reason.startswith("no local GPU can hold")
    assert declined.status == F and declined.route is None
    assert declined.error == "no capacity: needs 30 GB, largest GPU has 24 GB"
    assert len(rig.provider.created) == 1


def test_a_model_failing_to_load_sends_only_jobs_under_the_cost_cap():
    async def go():
        # $0.000222/s x 10 s = $0.00222 per job: under a cap of $0.01, and over a cap of $0.001.
        rig = CloudRig(apps=[with_fallback(max_cost_per_job=0.001, service_s=10)], failing=lambda m: "no checkpoint")
        job_id = rig.submit("a", x=1)
        rig.d.start()
        try:
            await asyncio.sleep(0.3)
            stays = rig.store.get(job_id)
            assert rig.provider.created == []
        finally:
            await rig.stop()
        rig2 = CloudRig(apps=[with_fallback(max_cost_per_job=0.01, service_s=10)], failing=lambda m: "no checkpoint")
        rig2.provider.state = "succeeded"
        job2 = rig2.submit("a", x=1)
        rig2.d.start()
        try:
            moved = await until(lambda: (j := rig2.store.get(job2)).status == S and j, what="sent to the fallback")
        finally:
            await rig2.stop()
        return stays, moved

    stays, moved = run(go())
    # Too dear for the cloud: it stays with the local model (and ends with its load error there).
    assert stays.route is None and stays.status in (Q, R)
    assert moved.route == "modal" and moved.route_reason == "the local model fails to load (no checkpoint)"


def test_a_usable_route_is_never_stranded_even_with_no_grace():
    async def go():
        rig = CloudRig(apps=[cloud_only()], grace_s=0.0)
        rig.provider.state = "succeeded"
        job_id = rig.submit("c", route="modal")
        rig.d.start()
        try:
            return await until(lambda: (j := rig.store.get(job_id)).status.terminal and j, what="the job ended")
        finally:
            await rig.stop()

    job = run(go())
    assert job.status == S and job.result == {"echo": "fc-0"}, job.error


def test_once_the_arbiter_finds_a_model_unplaceable_new_submits_go_to_the_fallback_at_once():
    async def go():
        says = {"m": "needs 30 GB, largest GPU has 24 GB"}
        rig = CloudRig(apps=[with_fallback()], refuse=lambda m: says.get(m))
        rig.provider.state = "succeeded"
        first = rig.submit("a", x=1)
        rig.d.start()
        try:
            await until(lambda: rig.store.get(first).status == S, what="the first job run on the fallback")
        finally:
            await rig.stop()
        says.clear()  # its queue is empty: the arbiter no longer mentions the model
        return rig.d.routing.route(rig.cfg.app("a"), {"x": 2})

    route = run(go())
    assert route.backend == "modal" and "needs 30 GB" in route.reason
