"""The dispatcher inside each router replica: claims queued jobs from Postgres and runs them on the
model deployments, with a bounded number in flight per app so ordering and priority stay in our
queue rather than in Serve's FIFO. Several router replicas run one each; claims never overlap.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from gpu_orchestrator.config import OrchestratorConfig
from gpu_orchestrator.events import AsyncEventBus
from gpu_orchestrator.jobs import Job, JobStatus, TransitionError
from gpu_orchestrator.registry import AppKind
from gpu_orchestrator.store import JobStore

log = logging.getLogger("gpu_orchestrator.dispatcher")


@dataclass
class InFlight:
    job: Job
    task: asyncio.Task
    response: Any = None  # the DeploymentResponse, so a cancel can reach the replica


def describe_error(exc: BaseException) -> str:
    """A short 'Type: message' for the job row, unwrapping Ray's task/actor error wrappers."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        exc = cause
    msg = str(exc).strip().splitlines()
    text = msg[-1] if msg else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _error_names(exc: BaseException) -> set[str]:
    """The error's type name and, for Ray's wrappers, its cause's (raised in another process)."""
    return {type(exc).__name__, type(getattr(exc, "cause", None)).__name__}


def is_load_error(exc: BaseException) -> bool:
    """The model replica could not load (deployments.base.ModelLoadError): retrying cannot help."""
    return "ModelLoadError" in _error_names(exc)


def is_cancellation(exc: BaseException) -> bool:
    return bool(_error_names(exc) & {"JobCancelled", "RequestCancelledError", "TaskCancelledError", "CancelledError"})


class Dispatcher:
    def __init__(
        self,
        *,
        cfg: OrchestratorConfig,
        store: JobStore,
        bus: AsyncEventBus,
        models: dict[str, Any],
        owner: str,
        on_finished: Callable[[str, str], None] | None = None,
        gate: Callable[[str], bool] | None = None,
        refuse: Callable[[str], str | None] | None = None,
    ):
        self.cfg = cfg
        self.store = store
        self.bus = bus
        self.models = models
        self.owner = owner
        self.on_finished = on_finished or (lambda app_id, status: None)
        # Whether a model deployment may be given work now (the GPU arbiter's residency decision).
        self.gate = gate or (lambda model: True)
        # Why a model's queued jobs can never run here (the arbiter found no GPU that holds it).
        self.refuse = refuse or (lambda model: None)
        self.inflight: dict[uuid.UUID, InFlight] = {}
        self.wake = asyncio.Event()
        self.lease_s = cfg.router.lease_s
        self.queue_stats: dict[str, Any] = {}
        self._task: asyncio.Task | None = None
        self._stopping = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()

    def poke(self) -> None:
        self.wake.set()

    async def _loop(self) -> None:
        last_maint = 0.0
        while not self._stopping:
            try:
                now = time.monotonic()
                if now - last_maint >= min(self.lease_s / 3, 5.0):
                    last_maint = now
                    await self._maintain()
                await self._claim_all()
            except asyncio.CancelledError:
                raise
            except Exception:  # Postgres restarting, Redis down: keep going, jobs are safe in the DB
                log.exception("dispatcher tick failed; retrying")
                await asyncio.sleep(1.0)
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=self.cfg.router.poll_interval_s)
            except asyncio.TimeoutError:
                pass

    async def _maintain(self) -> None:
        held = await asyncio.to_thread(self.store.heartbeat, owner=self.owner, job_ids=list(self.inflight), lease_s=self.lease_s)
        for job_id in set(self.inflight) - held:
            # Lost the lease (cancelled, or rescued after a stall): stop the work, drop its result.
            self._abort(job_id)
        for r in await asyncio.to_thread(self.store.rescue_expired):
            log.warning("rescued job %s -> %s (%s)", r.job_id, r.status.value, r.error)
            await self._publish_status(r.job_id, r.status.value, error=r.error)
            if r.status == JobStatus.failed:
                self.on_finished(r.app_id, "failed")
        self.queue_stats = await asyncio.to_thread(self.store.queue_stats)

    async def _claim_all(self) -> None:
        waiting = await asyncio.to_thread(self.store.apps_with_queued)
        for app in self.cfg.apps:
            if app.id not in waiting or app.kind != AppKind.local:
                continue  # cloud backends arrive with the fallback issue
            why = self.refuse(app.deployment)
            if why:
                await self._fail_queued(app.id, why)
                continue
            if not self.gate(app.deployment):
                continue  # cold, loading or draining: its jobs stay queued (and drive the arbiter)
            mine = sum(1 for f in self.inflight.values() if f.job.app_id == app.id)
            free = app.max_in_flight - mine
            if free <= 0:
                continue
            jobs = await asyncio.to_thread(
                self.store.claim, app_id=app.id, owner=self.owner, limit=free, lease_s=self.lease_s, max_in_flight=app.max_in_flight
            )
            for job in jobs:
                task = asyncio.get_running_loop().create_task(self._execute(job))
                self.inflight[job.id] = InFlight(job, task)

    async def _fail_queued(self, app_id: str, why: str) -> None:
        error = f"no capacity: {why}"
        for job_id in await asyncio.to_thread(self.store.fail_queued, app_id, error):
            log.warning("job %s failed: %s", job_id, error)
            await self._publish_status(job_id, "failed", error=error)
            self.on_finished(app_id, "failed")

    def _cancel_response(self, job_id: uuid.UUID) -> None:
        f = self.inflight.get(job_id)
        if f is not None and f.response is not None:
            try:
                f.response.cancel()  # raises CancelledError inside the model replica's request
            except Exception as e:
                log.debug("could not cancel the request of job %s: %s", job_id, e)

    def _abort(self, job_id: uuid.UUID) -> None:
        f = self.inflight.get(job_id)
        if f is None:
            return
        self._cancel_response(job_id)
        f.task.cancel()

    def cancel_local(self, job_id: uuid.UUID) -> bool:
        """Called on DELETE when this replica runs the job: cancel the request on the model replica."""
        if job_id in self.inflight:
            self._abort(job_id)
            return True
        return False

    async def _publish_status(self, job_id: uuid.UUID, status: str, **data: Any) -> None:
        try:
            await self.bus.publish(job_id, "status", status=status, **data)
        except Exception as e:  # events are lossy; the job row is the truth
            log.warning("could not publish status event for %s: %s", job_id, e)

    async def _execute(self, job: Job) -> None:
        app = self.cfg.app(job.app_id)
        assert app is not None
        attempt = job.attempts
        await self._publish_status(job.id, "running", attempt=attempt, router=self.owner)
        try:
            handle = self.models[app.deployment]
            response = handle.run.remote(str(job.id), job.params, attempt)
            self.inflight[job.id].response = response
            result = await asyncio.wait_for(response, timeout=job.timeout_s)
        except asyncio.CancelledError:
            return  # aborted: the job was cancelled or its lease lost; its row is already settled
        except asyncio.TimeoutError:
            self._cancel_response(job.id)  # stop the model's work too, not just our wait
            await self._record_failure(job, attempt, f"timed out after {job.timeout_s:g} s")
        except Exception as e:
            if is_cancellation(e):
                return
            await self._record_failure(job, attempt, describe_error(e), retryable=not is_load_error(e))
        else:
            await self._record_success(job, attempt, result, backend=f"local:{app.deployment}")
        finally:
            self.inflight.pop(job.id, None)
            self.wake.set()  # a slot freed up

    async def _record_success(self, job: Job, attempt: int, result: Any, backend: str) -> None:
        try:
            done = await asyncio.to_thread(
                self.store.complete, job_id=job.id, owner=self.owner, attempt=attempt, result=result, backend=backend
            )
        except TransitionError as e:
            # Cancelled meanwhile, or the lease expired and another attempt owns the job: the result
            # of this attempt is dropped so a recorded outcome is never overwritten.
            log.info("dropping result of job %s attempt %d: %s", job.id, attempt, e)
            return
        await self._publish_status(job.id, "succeeded", attempt=attempt, result=done.result)
        self.on_finished(job.app_id, "succeeded")

    async def _record_failure(self, job: Job, attempt: int, error: str, retryable: bool = True) -> None:
        try:
            after = await asyncio.to_thread(
                self.store.fail_attempt, job_id=job.id, owner=self.owner, attempt=attempt, error=error,
                retryable=retryable,
            )
        except TransitionError as e:
            log.info("not recording failure of job %s attempt %d: %s", job.id, attempt, e)
            return
        await self._publish_status(job.id, after.status.value, attempt=attempt, error=error)
        if after.status == JobStatus.failed:
            self.on_finished(job.app_id, "failed")
        else:
            self.wake.set()
