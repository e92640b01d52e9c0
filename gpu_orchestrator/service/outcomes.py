"""Outcomes: how the dispatcher records what an attempt ended with. Each store write is retried
until it lands (the job held meanwhile), then the outcome goes to a caller waiting on this replica
and is announced; a local run's cost is computed; a cloud run's id and progress are written and
published as they come. A mixin of Dispatcher (service/dispatcher.py), over its state.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Callable

from gpu_orchestrator.core.apps import AppSpec
from gpu_orchestrator.core.config import OrchestratorConfig
from gpu_orchestrator.core.costs import local_cost
from gpu_orchestrator.core.jobs import Job, JobStatus, RetryPolicy, TransitionError
from gpu_orchestrator.core.model_errors import JobCancelled
from gpu_orchestrator.service.cloud.backend import CloudRun
from gpu_orchestrator.service.inflight import InFlight
from gpu_orchestrator.service.transitions import Transitions
from gpu_orchestrator.store.base import Cost, JobLeases, LeaseKey, ResultNotStorable

log = logging.getLogger("gpu_orchestrator.dispatcher")  # the dispatcher's records, one logger


class Outcomes:
    WRITE_BACKOFF_S = (0.2, 5.0)

    # What it uses of the Dispatcher (set there).
    cfg: OrchestratorConfig
    store: JobLeases
    transitions: Transitions
    owner: str
    policy: RetryPolicy
    inflight: dict[LeaseKey, InFlight]
    _outcomes: dict[uuid.UUID, asyncio.Future]
    _cancel_run: Callable[[InFlight], None]

    async def _write(self, f: InFlight, fn: Callable[..., Any], **kw: Any) -> Any:
        """Run a store write for this attempt until it lands. Transient DB errors (a restart, a
        statement timeout, a full pool) are retried with backoff while the job stays in `inflight`,
        so its lease is renewed; TransitionError (another attempt or a cancel owns the job) and
        errors that would repeat are raised."""
        delay, cap = self.WRITE_BACKOFF_S
        while True:
            try:
                if asyncio.iscoroutinefunction(fn):  # the store runs it on the event loop
                    return await fn(**kw)
                return await asyncio.to_thread(fn, **kw)
            except Exception as e:
                if not self.store.is_transient(e):  # the store knows its driver's errors
                    raise
                f.write_retries += 1
                log.warning("job %s attempt %d: %s failed (%s); retrying in %.1f s", f.job.id, f.attempt,
                            getattr(fn, "__name__", "write"), type(e).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, cap)

    def _hand_over(self, f: InFlight) -> None:
        """A terminal outcome just committed goes to a caller waiting on this replica at once (before
        the status event: that is for the others and for streams)."""
        fut = self._outcomes.get(f.job.id)
        if fut is not None and not fut.done() and f.ended is not None and f.ended.status.terminal:
            fut.set_result(f.ended)

    def _settle_outcome(self, f: InFlight) -> None:
        """The attempt is over: a waiter not handed a terminal row (cancelled, lost, queued again)
        hears None and asks the store."""
        fut = self._outcomes.pop(f.job.id, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _local_cost(self, f: InFlight, app: AppSpec) -> Cost | None:
        """A local run's GPU-seconds (its wall time x the GPU share its model holds) and price."""
        model = self.cfg.models.get(app.deployment)
        if f.started is None or model is None:
            return None
        seconds = round(time.monotonic() - f.started, 3)  # the usage shows what the cost was computed from
        if model.num_gpus <= 0:  # a CPU run (the demo's): no GPU to price, and none named
            return Cost(0.0, 0.0, {"provider": "local", "seconds": seconds, "num_gpus": 0.0, "gpu_type": "cpu",
                                   "usd_per_gpu_hour": 0.0})
        gpu_type = model.gpu_type or self.cfg.costs.local_gpu_type
        gs, usd = local_cost(seconds, model.num_gpus, gpu_type, self.cfg.costs)
        return Cost(round(gs, 6), round(usd, 8), {
            "provider": "local", "seconds": seconds, "num_gpus": model.num_gpus, "gpu_type": gpu_type,
            "usd_per_gpu_hour": self.cfg.costs.local_per_gpu_hour.get(gpu_type, 0.0)})

    async def _remember_cloud(self, job: Job, attempt: int, ref: dict[str, Any]) -> None:
        """A cloud run's id on the job row, before anyone waits on it (CloudBackend calls this).
        Raises JobCancelled when this attempt no longer holds the job."""
        f = self.inflight.get((job.id, attempt))
        if f is None:
            raise JobCancelled("the attempt no longer holds the job")
        try:
            await self._write(f, self.store.set_cloud_ref, job_id=job.id, owner=self.owner, attempt=attempt, ref=ref)
        except TransitionError as e:
            raise JobCancelled(str(e)) from None

    async def _cloud_progress(self, job: Job, attempt: int, data: dict[str, Any]) -> None:
        await self._tell(job.id, {"attempt": attempt, **data})

    async def _tell(self, job_id: uuid.UUID, data: dict[str, Any]) -> None:
        """A progress event for the job's watchers (lossy: the row has the facts)."""
        try:
            await asyncio.wait_for(self.transitions.events.publish(job_id, "progress", **data),
                                   self.transitions.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # events are lossy
            log.debug("progress of job %s not published: %s", job_id, e)

    async def _record_success(self, f: InFlight, result: Any, backend: str, cost: Cost | None = None) -> None:
        job, attempt = f.job, f.attempt
        f.recording = True
        try:
            done = await self._write(f, self.store.acomplete, job_id=job.id, owner=self.owner, attempt=attempt,
                                     result=result, backend=backend, cost=cost)
        except TransitionError as e:
            done = None
            if f.write_retries and e.current == JobStatus.succeeded.value:
                # An earlier try may have committed before its connection dropped: say what the row says,
                # if it is this attempt's success (a later attempt that succeeded publishes its own).
                done = await asyncio.to_thread(self.store.get, job.id)
                done = done if done.claims == attempt else None
            if done is None:
                # Cancelled meanwhile, or the lease expired and another attempt owns the job: the result
                # of this attempt is dropped so a recorded outcome is never overwritten.
                log.info("dropping result of job %s attempt %d: %s", job.id, attempt, e)
                return
        except ResultNotStorable as e:  # e.g. a NUL in a string: a re-run would fail the same way
            f.recording = False
            await self._record_failure(f, f"the result could not be stored: {e}", retryable=False)
            return
        f.ended = done
        self._hand_over(f)
        self.transitions.ran(job.app_id, job.route or "local", JobStatus.succeeded, cost)
        await f.started_announced()
        await self.transitions.announce(job.id, job.app_id, JobStatus.succeeded, attempt=attempt, result=done.result,
                                        row=done)
        log.info("succeeded on %s in %.3f s", backend, time.monotonic() - (f.started or time.monotonic()))

    async def _record_failure(self, f: InFlight, error: str, retryable: bool = True, kind: str = "error",
                              cost: Cost | None = None) -> None:
        job, attempt = f.job, f.attempt
        f.recording = True
        # A model's message may hold what the database cannot (NUL, lone surrogates): escape it, so
        # the failure is recorded rather than lost with the task (the job would loop as "lost").
        error = error.replace("\x00", "\\0").encode("utf-8", "backslashreplace").decode("utf-8")
        try:
            after = await self._write(
                f, self.store.fail_attempt, job_id=job.id, owner=self.owner, attempt=attempt, error=error,
                retryable=retryable, kind=kind, retry_delay_s=self.policy.delay_s(job.attempts), cost=cost,
            )
        except TransitionError as e:
            log.info("not recording failure of job %s attempt %d: %s", job.id, attempt, e)
            return
        except Exception as e:
            log.exception("job %s attempt %d: could not record its failure", job.id, attempt)
            if error.startswith("the failure could not be recorded"):
                return
            await self._record_failure(f, f"the failure could not be recorded ({type(e).__name__})", retryable, kind)
            return
        if after.status.terminal and isinstance(f.run, CloudRun):
            self._cancel_run(f)  # a cloud run still going (the provider stopped answering) would bill on
        f.ended = after
        self._hand_over(f)
        self.transitions.ran(job.app_id, job.route or "local", JobStatus.failed, cost)
        await f.started_announced()
        await self.transitions.announce(job.id, job.app_id, after.status, attempt=attempt, error=error, row=after)
        log.info("attempt %d failed (%s) -> %s: %s", attempt, kind, after.status.value, error[:200])
