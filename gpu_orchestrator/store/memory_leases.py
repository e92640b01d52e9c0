"""The in-memory store's statements for a job's run under a lease: claim, the dispatch and
cloud-run marks, heartbeat, an attempt's end (complete, fail_attempt), leases that end without one
(rescue_expired, release); and the dispatcher's moves of an app's queued jobs (fail_queued,
reroute_queued). A mixin of MemoryJobStore (store/memory.py), as store/pg_leases.py is of the
Postgres one."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Callable, ContextManager, Iterable

from gpu_orchestrator.core.apps import check_text
from gpu_orchestrator.core.jobs import Job, JobStatus, RetryPolicy, TransitionError
from gpu_orchestrator.store.base import (ANY_ROUTE, LEASE_EXPIRED, MAX_ERRORS, MSG_GIVE_UP, RELEASED, Cost, LeaseEnd,
                                         LeaseKey, Rescued, ResultNotStorable, clip_error)
from gpu_orchestrator.store.memory_rows import Q, R, _json, _secs

# What Postgres answers for a NUL in a jsonb string (a lone surrogate gets another message there).
_JSONB_REFUSES = "UntranslatableCharacter: unsupported Unicode escape sequence"


class MemoryLeases:
    # MemoryJobStore's (store/memory.py):
    _jobs: dict[uuid.UUID, Job]  # its rows, in creation order
    _tx: Callable[[], ContextManager[dt.datetime]]  # one "transaction", reading one `now`
    _set: Callable[..., Job]  # a change to a row; returns the caller's own copy

    def _queued(self, app_id: str, frm: str | None, ids: Any, older_than_s: float | None, now: dt.datetime) -> list[Job]:
        keep = None if ids is None else set(ids)
        return [j for j in self._jobs.values() if j.app_id == app_id and j.status == Q
                and (frm == ANY_ROUTE or j.route == frm) and (keep is None or j.id in keep)
                and (older_than_s is None or j.created_at < now - _secs(older_than_s))]

    def claim(self, *, app_id: str, owner: str, limit: int, lease_s: float, max_in_flight: int,
              route: str | None = None) -> list[Job]:
        with self._tx() as now:
            running = sum(1 for j in self._jobs.values() if j.app_id == app_id and j.status == R and j.route == route)
            n = min(limit, max_in_flight - running)
            if n <= 0:
                return []
            ready = [j for j in self._jobs.values() if j.app_id == app_id and j.status == Q and j.route == route
                     and (j.run_after is None or j.run_after <= now)]
            ready.sort(key=lambda j: (-j.priority, j.created_at, j.id))
            return [self._set(j, status=R, attempts=j.attempts + 1, claims=j.claims + 1, lease_owner=owner,
                              lease_expires_at=now + _secs(lease_s), started_at=j.started_at or now,
                              dispatched_at=None, run_after=None) for j in ready[:n]]

    def _leased(self, job_id: uuid.UUID, owner: str, attempt: int, wanted: str) -> Job:
        """The guard for a running attempt: this owner's lease, on this very claim."""
        job = self._jobs.get(job_id)
        if job is None or job.status != R or job.lease_owner != owner or job.claims != attempt:
            raise TransitionError(job_id, job.status.value if job else None, wanted)
        return job

    def mark_dispatched(self, *, job_id: uuid.UUID, owner: str, attempt: int) -> None:
        with self._tx() as now:
            self._set(self._leased(job_id, owner, attempt, "dispatch"), dispatched_at=now)

    def heartbeat(self, *, owner: str, leases: Iterable[LeaseKey], lease_s: float) -> set[LeaseKey]:
        held = set()
        with self._tx() as now:
            for job_id, attempt in leases:
                j = self._jobs.get(job_id)
                if j is not None and j.status == R and j.lease_owner == owner and j.claims == attempt:
                    self._set(j, lease_expires_at=now + _secs(lease_s))
                    held.add((job_id, attempt))
        return held

    def set_cloud_ref(self, *, job_id: uuid.UUID, owner: str, attempt: int, ref: dict[str, Any]) -> None:
        with self._tx():
            self._set(self._leased(job_id, owner, attempt, "record its cloud run"), cloud_ref=_json(ref))

    def reroute_queued(self, app_id: str, backend: str | None, reason: str, *, frm: str | None = None,
                       ids: Any = None, older_than_s: float | None = None) -> list[uuid.UUID]:
        with self._tx() as now:
            jobs = self._queued(app_id, frm, ids, older_than_s, now)
            for j in jobs:
                self._set(j, route=backend, route_reason=reason)
            return [j.id for j in jobs]

    def complete(self, *, job_id: uuid.UUID, owner: str, attempt: int, result: Any, backend: str,
                 cost: Cost | None = None) -> Job:
        with self._tx() as now:
            job = self._leased(job_id, owner, attempt, "complete")
            result = _json(result, default=str)
            if check_text("result", result):  # a string jsonb cannot hold, as the params check finds them
                raise ResultNotStorable(_JSONB_REFUSES)
            return self._set(job, status=JobStatus.succeeded, result=result, backend=backend,
                             finished_at=now, error=None, lease_owner=None, lease_expires_at=None, **_cost(job, cost))

    def fail_attempt(self, *, job_id: uuid.UUID, owner: str, attempt: int, error: str, retryable: bool = True,
                     backend: str | None = None, kind: str = "error", retry_delay_s: float = 0.0,
                     cost: Cost | None = None) -> Job:
        error = clip_error(error)
        with self._tx() as now:
            job = self._leased(job_id, owner, attempt, "record a failed attempt")
            requeue = retryable and job.attempts < job.max_attempts
            return self._set(
                job, status=Q if requeue else JobStatus.failed, finished_at=None if requeue else now,
                run_after=now + _secs(retry_delay_s) if requeue else None, error=error,
                backend=backend if backend is not None else job.backend, dispatched_at=None,
                errors=_append_error(job, kind, error, now), lease_owner=None, lease_expires_at=None,
                **_cost(job, cost),
            )

    def fail_queued(self, app_id: str, error: str, *, older_than_s: float | None = None,
                    route: str | None = None) -> list[uuid.UUID]:
        with self._tx() as now:
            jobs = self._queued(app_id, route, None, older_than_s, now)
            for j in jobs:
                self._set(j, status=JobStatus.failed, finished_at=now, error=error, run_after=None)
            return [j.id for j in jobs]

    def rescue_expired(self, policy: RetryPolicy = RetryPolicy()) -> list[Rescued]:
        with self._tx() as now:
            return self._requeue_leases(lambda j: j.lease_expires_at < now, now, policy, LEASE_EXPIRED)

    def release(self, *, owner: str, policy: RetryPolicy = RetryPolicy()) -> list[Rescued]:
        with self._tx() as now:
            return self._requeue_leases(lambda j: j.lease_owner == owner, now, policy, RELEASED)

    def _requeue_leases(self, pick: Callable[[Job], bool], now: dt.datetime, policy: RetryPolicy,
                        how: LeaseEnd) -> list[Rescued]:
        """Running jobs whose lease ended: back to the queue with the attempt refunded; a run that
        was on a model replica counts as lost, and fails the job at policy.max_lost_attempts."""
        out = []
        for j in [j for j in self._jobs.values() if j.status == R and pick(j)]:
            lost = j.dispatched_at is not None
            n_lost = j.lost_attempts + lost
            give_up = lost and n_lost >= policy.max_lost_attempts
            if give_up:
                msg = MSG_GIVE_UP % (n_lost, j.claims)
            elif lost:
                msg = how.msg_lost % (j.claims, n_lost, policy.max_lost_attempts)
            else:
                msg = how.msg_undispatched % j.claims
            run_after = None
            if lost and not give_up and how.backoff:  # the lost run is retry n_lost: its backoff
                run_after = now + _secs(policy.delay_s(n_lost))
            new = self._set(
                j, status=JobStatus.failed if give_up else Q, finished_at=now if give_up else None,
                attempts=max(j.attempts - 1, 0), lost_attempts=n_lost, run_after=run_after, error=msg,
                errors=_append_error(j, how.kind_lost if lost else how.kind_undispatched, msg, now),
                lease_owner=None, lease_expires_at=None, dispatched_at=None,
            )
            out.append(Rescued(j.id, j.app_id, new.status, msg, lost))
        return out


def _cost(job: Job, cost: Cost | None) -> dict[str, Any]:
    """A run's cost added to the earlier attempts' (as the Postgres store's _COST_SET)."""
    if cost is None:
        return {}
    return {"gpu_seconds": (job.gpu_seconds or 0.0) + cost.gpu_seconds, "cost_usd": (job.cost_usd or 0.0) + cost.usd,
            "usage": _json(cost.usage, default=str)}


def _append_error(job: Job, kind: str, error: str, now: dt.datetime) -> tuple[dict[str, Any], ...]:
    entry = {"attempt": job.claims, "error": error, "at": now.isoformat(), "kind": kind}
    return (job.errors[1:] if len(job.errors) >= MAX_ERRORS else job.errors) + (entry,)
