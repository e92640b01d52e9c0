"""The dispatcher inside each router replica: claims queued jobs from the store and runs them on the
model backends, with a bounded number in flight per app so ordering and priority stay in our
queue rather than in Serve's FIFO. Several router replicas run one each; claims never overlap.

Each claim is one attempt, keyed (job id, attempt) here and in the lease: a job rescued and claimed
again while an older attempt still runs on this replica is two entries, and only the current one
keeps its lease. A result is written until it lands (a database blip does not lose it); the job
stays held, its lease renewed, meanwhile. After every transition it commits, the dispatcher
announces it (one status event, one metric: service.transitions), best effort.

Cloud: jobs routed to a provider at submit (job.route) are claimed apart from the app's local ones,
with the cloud target's own in-flight cap, and run on its CloudBackend (service/cloud.py). Queued
local jobs of an app with a fallback move there when their model turns out unplaceable or fails to
load. Each run's cost (local: seconds x GPU share x the GPU's rate) is written with its outcome.

What a run ends with arrives typed (core.model_errors, translated by the backend): its `kind` goes
into the job's error history and `retryable` decides whether the job is queued again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from gpu_orchestrator.core.apps import AppKind, AppSpec
from gpu_orchestrator.core.config import OrchestratorConfig
from gpu_orchestrator.core.costs import local_cost
from gpu_orchestrator.core.jobs import Job, JobStatus, RetryPolicy, TransitionError
from gpu_orchestrator.core.model_errors import JobCancelled, as_model_error
from gpu_orchestrator.service.backends import ModelBackend, ModelRun
from gpu_orchestrator.service.cloud import CloudBackend, Outcome
from gpu_orchestrator.service.cloud_routing import CloudRouting
from gpu_orchestrator.service.transitions import Transitions
from gpu_orchestrator.store.base import AppQueueStats, Cost, JobStore, LeaseKey, ResultNotStorable

log = logging.getLogger("gpu_orchestrator.dispatcher")


@dataclass
class InFlight:
    job: Job
    task: asyncio.Task | None = None
    run: ModelRun | None = None  # the model backend's run, so a cancel can reach the replica
    recording: bool = False  # the outcome is in hand and being written
    write_retries: int = 0
    started: float | None = None  # monotonic time the run was handed to its backend

    @property
    def key(self) -> LeaseKey:
        return (self.job.id, self.job.claims)

    @property
    def attempt(self) -> int:
        return self.job.claims


class Dispatcher:
    ANSWER_MARGIN_S = 60.0  # beyond the slot wait and the job's timeout, for the model to stop
    RELEASE_WAIT_S = 5.0  # a stopping router finishes writing results in hand this long at most
    WRITE_BACKOFF_S = (0.2, 5.0)

    def __init__(
        self,
        *,
        cfg: OrchestratorConfig,
        store: JobStore,
        transitions: Transitions,
        backends: Mapping[str, ModelBackend],
        owner: str,
        gate: Callable[[str], bool] | None = None,
        refuse: Callable[[str], str | None] | None = None,
        cloud: Mapping[str, CloudBackend] | None = None,
        failing: Callable[[str], str | None] | None = None,
    ):
        self.cfg = cfg
        self.store = store
        self.transitions = transitions
        self.backends = backends  # by model deployment name
        self.owner = owner
        # Whether a model deployment may be given work now (the GPU arbiter's residency decision).
        self.gate = gate or (lambda model: True)
        # Why a model's queued jobs can never run here (the arbiter found no GPU that holds it).
        self.refuse = refuse or (lambda model: None)
        # Cloud backends by provider name, and the routing of new jobs between them and local.
        self.cloud = dict(cloud or {})
        for b in self.cloud.values():
            b.remember, b.progress = self._remember_cloud, self._cloud_progress
        self.routing = CloudRouting(cfg, {n: b.provider.unavailable() for n, b in self.cloud.items()},
                                    refuse=self.refuse, failing=failing or (lambda model: None),
                                    resident=self.gate)
        self._service_at = 0.0
        self.inflight: dict[LeaseKey, InFlight] = {}
        self.wake = asyncio.Event()
        self.lease_s = cfg.router.lease_s
        r = cfg.router
        self.policy = RetryPolicy(backoff_s=r.retry_backoff_s, backoff_max_s=r.retry_backoff_max_s,
                                  max_lost_attempts=r.max_lost_attempts)
        self.queue_stats: dict[str, AppQueueStats] = {}
        self._task: asyncio.Task | None = None
        self._claiming: asyncio.Future | None = None
        self._unrunnable_since: dict[str, float] = {}
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
            except Exception:  # the database restarting: keep going, jobs are safe in it
                log.exception("dispatcher tick failed; retrying")
                await asyncio.sleep(1.0)
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=self.cfg.router.poll_interval_s)
            except asyncio.TimeoutError:
                pass

    async def _maintain(self) -> None:
        sent = list(self.inflight)
        held = await asyncio.to_thread(self.store.heartbeat, owner=self.owner, leases=sent, lease_s=self.lease_s)
        for key in set(sent) - held:
            # Lost the lease (cancelled, or rescued after a stall): stop the work, drop its result.
            await self._lost(key)
        for r in await asyncio.to_thread(self.store.rescue_expired, self.policy):
            log.warning("rescued job %s -> %s (%s)", r.job_id, r.status.value, r.error)
            await self.transitions.announce(r.job_id, r.app_id, r.status, error=r.error)
        self.queue_stats = self.routing.stats = await asyncio.to_thread(self.store.queue_stats)
        if self.cloud and time.monotonic() - self._service_at > 30.0:  # the wait estimate's service times
            self._service_at = time.monotonic()
            self.routing.service_s = await asyncio.to_thread(self.store.service_times)
        await self._fail_unrunnable()

    async def _fail_unrunnable(self) -> None:
        """Queued jobs of an app no longer in the config (or of a kind nothing here runs) would wait
        for ever: fail them once this router has seen them so for the grace period, and only jobs
        older than it (a rolling config update may add apps this replica does not know yet)."""
        runnable = {a.id for a in self.cfg.apps if a.kind == AppKind.local or a.kind.value in self.cloud}
        queued = {app_id for app_id, s in self.queue_stats.items() if s.queued}
        now = time.monotonic()
        for app_id in list(self._unrunnable_since):
            if app_id not in queued or app_id in runnable:
                del self._unrunnable_since[app_id]
        grace = self.cfg.router.unconfigured_app_grace_s
        for app_id in sorted(queued - runnable):
            if now - self._unrunnable_since.setdefault(app_id, now) < grace:
                continue
            spec = self.cfg.app(app_id)
            error = (f"app {app_id} is no longer configured" if spec is None
                     else f"app {app_id} runs on {spec.kind.value}, which this orchestrator has no backend for")
            await self._fail_queued(app_id, error, older_than_s=grace)

    async def _claim_all(self) -> None:
        waiting = await asyncio.to_thread(self.store.apps_with_queued)
        for app in self.cfg.apps:
            if app.id not in waiting:
                continue
            if app.kind != AppKind.local:
                # A router without the token leaves them to one that has it (a rolling update).
                if app.kind.value in self.cloud and app.cloud is not None and \
                        self.routing.why_unavailable(app.kind.value) is None:
                    await self._claim(app, app.kind.value, app.cloud.max_in_flight)
                continue
            fb = app.fallback
            usable = (fb is not None and fb.when != "never" and fb.backend in self.cloud
                      and self.routing.why_unavailable(fb.backend) is None)
            # With a usable fallback, a model the arbiter found unplaceable a moment ago still is.
            why = self.routing.unplaceable(app.deployment) if usable else self.refuse(app.deployment)
            failing = self.routing.failing(app.deployment) if usable else None
            if usable and (why or failing):  # its queued local jobs can go where they will run
                assert fb is not None
                reason = (f"no local GPU can hold the model ({why})" if why
                          else f"the local model fails to load ({failing})")
                for job_id in await asyncio.to_thread(self.store.reroute_queued, app.id, fb.backend, reason):
                    log.info("job %s -> %s: %s", job_id, fb.backend, reason)
            if usable:
                assert fb is not None
                await self._claim(app, fb.backend, fb.max_in_flight)
            if why:
                if not usable:
                    await self._fail_queued(app.id, f"no capacity: {why}")
                continue
            if not self.gate(app.deployment):
                continue  # cold, loading or draining: its jobs stay queued (and drive the arbiter)
            await self._claim(app, None, app.max_in_flight)

    async def _claim(self, app: AppSpec, route: str | None, cap: int) -> None:
        """Claim what this replica may run of the app's jobs on `route` (None: local) and start them."""
        mine = sum(1 for f in self.inflight.values() if f.job.app_id == app.id and f.job.route == route)
        free = cap - mine
        if free <= 0 or self._stopping:
            return
        # Shielded: a graceful stop waits for a claim in progress, then hands its jobs back too.
        self._claiming = asyncio.ensure_future(asyncio.to_thread(
            self.store.claim, app_id=app.id, owner=self.owner, limit=free, lease_s=self.lease_s,
            max_in_flight=cap, route=route,
        ))
        jobs = await asyncio.shield(self._claiming)
        if self._stopping:
            return
        for job in jobs:
            f = InFlight(job)
            self.inflight[f.key] = f
            f.task = asyncio.get_running_loop().create_task(self._execute(f))

    async def _fail_queued(self, app_id: str, error: str, older_than_s: float | None = None) -> None:
        """queued -> failed for the app's jobs that can never run here, each announced."""
        for job_id in await asyncio.to_thread(self.store.fail_queued, app_id, error, older_than_s=older_than_s):
            log.warning("job %s failed: %s", job_id, error)
            await self.transitions.announce(job_id, app_id, JobStatus.failed, error=error)

    def _cancel_run(self, f: InFlight) -> None:
        if f.run is not None:
            try:
                f.run.cancel()  # stops the work on the model replica
            except Exception as e:
                log.debug("could not cancel the request of job %s: %s", f.job.id, e)

    async def _lost(self, key: LeaseKey) -> None:
        """A cloud run whose job another router now holds goes on there (it re-attaches): stop
        waiting on it, without cancelling the prediction. Cancelled or ended: cancel it too."""
        f = self.inflight.get(key)
        detach = getattr(f.run, "detach", None) if f is not None else None
        if f is not None and detach is not None and f.task is not None:
            try:
                job = await asyncio.to_thread(self.store.get, key[0])
                if not job.status.terminal:
                    detach()
                    f.task.cancel()
                    return
            except Exception as e:  # unknown: cancelling is the safe side for the bill
                log.debug("job %s: status unknown on lease loss: %s", key[0], e)
        self._abort(key)

    def _abort(self, key: LeaseKey) -> None:
        f = self.inflight.get(key)
        if f is None:
            return
        self._cancel_run(f)
        if f.task is not None:
            f.task.cancel()

    def cancel_local(self, job_id: uuid.UUID) -> bool:
        """Called on DELETE when this replica runs the job: cancel the request on the model replica
        (every attempt of it running here)."""
        keys = [k for k in self.inflight if k[0] == job_id]
        for key in keys:
            self._abort(key)
        return bool(keys)

    async def release_all(self) -> int:
        """Graceful stop (Serve stopping this router: rolling update, downscale). Stop claiming,
        cancel the in-flight model requests, and hand every lease this router holds back in one
        UPDATE (running -> queued at once, attempt refunded), instead of leaving them to expire.
        A result already in hand is written first (for up to RELEASE_WAIT_S). Returns how many
        jobs were handed back."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
        recording = [f.task for f in self.inflight.values() if f.recording and f.task is not None]
        for key, f in list(self.inflight.items()):
            if f.recording:
                continue
            detach = getattr(f.run, "detach", None)
            if detach is not None and f.task is not None:  # a cloud run goes on; its next claimer re-attaches
                detach()
                f.task.cancel()
            else:
                self._abort(key)
        pending = recording + ([self._claiming] if self._claiming is not None else [])
        if pending:
            await asyncio.wait(pending, timeout=self.RELEASE_WAIT_S)
        try:
            released = await asyncio.to_thread(self.store.release, owner=self.owner, policy=self.policy)
        except Exception as e:  # the database down: the leases expire and are rescued as usual
            log.warning("could not hand back this router's leases (%s); they expire within %g s", e, self.lease_s)
            return 0
        log.info("handed back %d job(s) on stop", len(released))
        await asyncio.gather(*(self.transitions.announce(r.job_id, r.app_id, r.status, error=r.error)
                               for r in released))
        return len(released)

    async def _write(self, f: InFlight, fn: Callable[..., Any], **kw: Any) -> Any:
        """Run a store write for this attempt until it lands. Transient DB errors (a restart, a
        statement timeout, a full pool) are retried with backoff while the job stays in `inflight`,
        so its lease is renewed; TransitionError (another attempt or a cancel owns the job) and
        errors that would repeat are raised."""
        delay, cap = self.WRITE_BACKOFF_S
        while True:
            try:
                return await asyncio.to_thread(fn, **kw)
            except Exception as e:
                if not self.store.is_transient(e):  # the store knows its driver's errors
                    raise
                f.write_retries += 1
                log.warning("job %s attempt %d: %s failed (%s); retrying in %.1f s", f.job.id, f.attempt,
                            getattr(fn, "__name__", "write"), type(e).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, cap)

    async def _execute(self, f: InFlight) -> None:
        job, attempt = f.job, f.attempt
        app = self.cfg.app(job.app_id)
        assert app is not None
        queue_s = self.cfg.router.replica_queue_timeout_s
        # The model times the work (timeout_s) apart from its wait for a slot (queue_timeout_s);
        # our own bound only catches a replica that never answers.
        limit = queue_s + job.timeout_s + self.ANSWER_MARGIN_S
        try:
            # The claim committed `running`: announced once per attempt, before the model gets it.
            await self.transitions.announce(job.id, job.app_id, JobStatus.running, attempt=attempt, router=self.owner,
                                            backend=job.route or "local", reason=job.route_reason)
            try:
                await self._write(f, self.store.mark_dispatched, job_id=job.id, owner=self.owner, attempt=attempt)
            except TransitionError as e:
                log.info("not dispatching job %s attempt %d: %s", job.id, attempt, e)
                return
            backend = self.cloud[job.route] if job.route else self.backends[app.deployment]
            f.started = time.monotonic()
            f.run = backend.run(job, attempt, timeout_s=job.timeout_s, queue_timeout_s=queue_s)
            result = await asyncio.wait_for(f.run, timeout=limit)
        except asyncio.CancelledError:
            return  # aborted: the job was cancelled or its lease lost or released; its row is settled
        except asyncio.TimeoutError:
            self._cancel_run(f)  # stop the model's work too, not just our wait
            await self._record_failure(f, f"no answer from the model replica after {limit:g} s", kind="timeout",
                                       cost=None if job.route else self._local_cost(f, app))
        except Exception as e:
            err = as_model_error(e)  # a backend raises model errors; anything else failed all the same
            if isinstance(err, JobCancelled):
                return  # the model saw the cancel flag, or its request was cancelled: the cancel settles the row
            cost = getattr(err, "cost", None) if job.route else self._local_cost(f, app)
            await self._record_failure(f, err.describe(), retryable=err.retryable, kind=err.kind, cost=cost)
        else:
            if isinstance(result, Outcome):
                await self._record_success(f, result.result, backend=f"{job.route}:{self.cloud[job.route].targets[job.app_id].target.ref}",
                                           cost=result.cost)
            else:
                await self._record_success(f, result, backend=f"local:{app.deployment}", cost=self._local_cost(f, app))
        finally:
            if self.inflight.get(f.key) is f:
                del self.inflight[f.key]
            self.wake.set()  # a slot freed up

    def _local_cost(self, f: InFlight, app: AppSpec) -> Cost | None:
        """A local run's GPU-seconds (its wall time x the GPU share its model holds) and price."""
        model = self.cfg.models.get(app.deployment)
        if f.started is None or model is None:
            return None
        seconds = round(time.monotonic() - f.started, 3)  # the usage shows what the cost was computed from
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
        try:
            await asyncio.wait_for(self.transitions.events.publish(job.id, "progress", attempt=attempt, **data),
                                   self.transitions.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # events are lossy
            log.debug("progress of job %s not published: %s", job.id, e)

    async def _record_success(self, f: InFlight, result: Any, backend: str, cost: Cost | None = None) -> None:
        job, attempt = f.job, f.attempt
        f.recording = True
        try:
            done = await self._write(f, self.store.complete, job_id=job.id, owner=self.owner, attempt=attempt,
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
        await self.transitions.announce(job.id, job.app_id, JobStatus.succeeded, attempt=attempt, result=done.result)

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
        await self.transitions.announce(job.id, job.app_id, after.status, attempt=attempt, error=error)
