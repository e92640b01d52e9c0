"""The dispatcher inside each router replica: claims queued jobs from the store and runs them on the
model backends, with a bounded number in flight per app so ordering and priority stay in our
queue rather than in Serve's FIFO. Several router replicas run one each; claims never overlap.

Each claim is one attempt, keyed (job id, attempt) here and in the lease: a job rescued and claimed
again while an older attempt still runs on this replica is two entries, and only the current one
keeps its lease. A result is written until it lands (a database blip does not lose it); the job
stays held, its lease renewed, meanwhile. After every transition it commits, the dispatcher
announces it (one status event, one metric: service.transitions), best effort.

Cloud: jobs routed to a provider at submit (job.route) are claimed apart from the app's local ones,
with the cloud target's own in-flight cap, and run on its CloudBackend (service/cloud/backend.py). Queued
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
from typing import Any, Callable, Mapping

from gpu_orchestrator import logs
from gpu_orchestrator.core.apps import AppKind, AppSpec
from gpu_orchestrator.core.config import OrchestratorConfig
from gpu_orchestrator.core.jobs import Job, JobStatus, RetryPolicy, TransitionError
from gpu_orchestrator.core.model_errors import JobCancelled, as_model_error
from gpu_orchestrator.service.backends import ModelBackend
from gpu_orchestrator.service.claims import Claims
from gpu_orchestrator.service.cloud.backend import CloudBackend, CloudRun, Outcome
from gpu_orchestrator.service.cloud.routing import CloudRouting
from gpu_orchestrator.service.inflight import InFlight
from gpu_orchestrator.service.outcomes import Outcomes
from gpu_orchestrator.service.transitions import Transitions
from gpu_orchestrator.store.base import AppQueueStats, JobLeases, LeaseKey, StartNow

log = logging.getLogger("gpu_orchestrator.dispatcher")


class Dispatcher(Claims, Outcomes):
    """Claiming (service/claims.py) and recording outcomes (service/outcomes.py) are its mixins."""

    ANSWER_MARGIN_S = 60.0  # beyond the slot wait and the job's timeout, for the model to stop
    RELEASE_WAIT_S = 5.0  # a stopping router finishes writing results in hand this long at most

    def __init__(
        self,
        *,
        cfg: OrchestratorConfig,
        store: JobLeases,
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
        self._unrunnable_since: dict[tuple[str, str | None], float] = {}  # (app, route) -> first seen stranded
        self._waiting: dict[str, set[str | None]] = {}  # app -> routes with queued jobs, from the last claim pass
        self._sent_at: dict[str, float] = {}  # app -> when its queued jobs were last offered to its fallback
        self._stopping = False
        self._poked: set[tuple[str, str | None]] = set()  # (app, route) queues to look at now
        self._poked_all = False
        # Jobs this replica started at submit, by id: their outcome, for a caller waiting here.
        self._outcomes: dict[uuid.UUID, asyncio.Future] = {}

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()

    def poke(self, app_id: str | None = None, route: str | None = None) -> None:
        """Look for work now: with an app (a job just submitted on `route`, or a slot just freed),
        only that app's queue; without, every queue."""
        if app_id is None:
            self._poked_all = True
        else:
            self._poked.add((app_id, route))
        self.wake.set()

    def start_terms(self, app: AppSpec, route: str | None) -> StartNow | None:
        """The lease under which a job of `app` just accepted here may start at once (the store still
        checks that nothing of the app waits and a slot is free), or None: it queues as usual. Local
        jobs only, of a model the arbiter lets run now, while this replica has a slot for the app."""
        if self._task is None or self._stopping or route is not None or app.kind != AppKind.local:
            return None
        if self.refuse(app.deployment) or not self.gate(app.deployment) or app.deployment not in self.backends:
            return None
        if self._mine(app.id, route) >= app.max_in_flight:
            return None
        return StartNow(owner=self.owner, lease_s=self.lease_s, max_in_flight=app.max_in_flight)

    def adopt(self, job: Job) -> None:
        """Run a job the submit just inserted as running under this replica's lease (StartNow)."""
        if self._stopping:  # stopping since the terms were given: its lease expires and it is rescued
            log.warning("job %s started as this router stops: left to lease rescue", job.id)
            return
        f = InFlight(job)
        self.inflight[f.key] = f
        self._outcomes[job.id] = asyncio.get_running_loop().create_future()
        f.task = asyncio.get_running_loop().create_task(self._execute(f, dispatched=True))

    def outcome(self, job_id: uuid.UUID) -> asyncio.Future | None:
        """For a job started here at submit: a future of its row once its outcome is committed
        (None if it ended otherwise: cancelled, lost, handed back; ask the store then)."""
        return self._outcomes.get(job_id)

    def _mine(self, app_id: str, route: str | None) -> int:
        return sum(1 for f in self.inflight.values() if f.job.app_id == app_id and f.job.route == route)

    async def _loop(self) -> None:
        last_maint = last_scan = 0.0
        while not self._stopping:
            # Taken before the pass: a poke while it runs sets `wake` again, so it is never lost.
            self.wake.clear()
            poked, self._poked = self._poked, set()
            scan_all, self._poked_all = self._poked_all, False
            try:
                now = time.monotonic()
                if now - last_maint >= min(self.lease_s / 3, 5.0):
                    last_maint = now
                    await self._maintain()
                # Every queue each poll interval (and on a general poke); in between, only the queues
                # a submit or a freed slot named: a job is claimed without a query for apps with work.
                if scan_all or not poked or now - last_scan >= self.cfg.router.poll_interval_s:
                    last_scan = now
                    await self._claim_all()
                else:
                    await self._claim_all(poked)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database restarting: keep going, jobs are safe in it
                log.exception("dispatcher tick failed; retrying")
                self._poked_all = True
                await asyncio.sleep(1.0)
            if self.wake.is_set():
                continue
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
            log.warning("rescued job %s -> %s (%s)", r.job_id, r.status.value, r.error, extra={"job_id": r.job_id})
            await self.transitions.announce(r.job_id, r.app_id, r.status, error=r.error)
        self.queue_stats = self.routing.stats = await asyncio.to_thread(self.store.queue_stats)
        if self.cloud and time.monotonic() - self._service_at > 30.0:  # the wait estimate's service times
            self._service_at = time.monotonic()
            self.routing.service_s = await asyncio.to_thread(self.store.service_times)
        await self._settle_stranded()

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
        if f is not None and f.recording:
            # Its outcome is in hand and being written: the commit itself ends the lease, and a write
            # that finds another owner drops the result. Cancelling here would cut the announce after it.
            return
        if f is not None and isinstance(f.run, CloudRun):
            try:
                job = await asyncio.to_thread(self.store.get, key[0])
                if not job.status.terminal and self._detach(f):
                    return
            except Exception as e:  # unknown: cancelling is the safe side for the bill
                log.debug("job %s: status unknown on lease loss: %s", key[0], e)
        self._abort(key)

    @staticmethod
    def _detach(f: InFlight) -> bool:
        """Stop waiting on a cloud run and leave it going for whoever claims the job next (it
        re-attaches; CloudRun.detach stops a run only this process can follow). False: not a cloud
        run, nothing done."""
        if not isinstance(f.run, CloudRun) or f.task is None:
            return False
        f.run.detach()
        f.task.cancel()
        return True

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

    def cancel_detached(self, job: Job) -> None:
        """A job cancelled while queued may still name a cloud run no one waits on (left running by
        a graceful stop or between attempts for re-attaching): cancel it at the provider."""
        backend = self.cloud.get(job.route or "")
        if backend is not None:
            backend.cancel_detached(job)

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
            if not self._detach(f):  # a cloud run goes on; its next claimer re-attaches
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

    async def _execute(self, f: InFlight, dispatched: bool = False) -> None:
        """Run one attempt and record its outcome. `dispatched`: started at submit, its row already
        running and marked dispatched (see StartNow)."""
        job, attempt = f.job, f.attempt
        logs.set_job(job.id, attempt)  # this task's records carry the job (its own task: nothing leaks)
        app = self.cfg.app(job.app_id)
        assert app is not None
        queue_s = self.cfg.router.replica_queue_timeout_s
        # The model times the work (timeout_s) apart from its wait for a slot (queue_timeout_s);
        # our own bound only catches a replica that never answers.
        limit = queue_s + job.timeout_s + self.ANSWER_MARGIN_S
        try:
            # `running` is committed: announced once per attempt. A claimed job's before the model gets
            # it (while the dispatch is recorded: the two are independent); one created and started by
            # its insert announces both steps at once, with nothing to mark, while the model starts (its
            # round trip off the job's path; the outcome's event waits for it: InFlight.started_announced).
            running = dict(attempt=attempt, router=self.owner, backend=job.route or "local", reason=job.route_reason)
            mark: Any = None
            if dispatched:
                f.announced = asyncio.ensure_future(self.transitions.announce_started(job.id, job.app_id, **running))
            else:
                _, mark = await asyncio.gather(
                    self.transitions.announce(job.id, job.app_id, JobStatus.running, **running),
                    self._write(f, self.store.mark_dispatched, job_id=job.id, owner=self.owner, attempt=attempt),
                    return_exceptions=True)
            if isinstance(mark, TransitionError):
                log.info("not dispatching job %s attempt %d: %s", job.id, attempt, mark)
                return
            if isinstance(mark, BaseException):
                raise mark
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
            self._settle_outcome(f)
            # A slot freed up: look for work only where the last look found more than it took.
            if job.route in self._waiting.get(job.app_id, ()):
                self.poke(job.app_id, job.route)
