"""MemoryJobStore: the JobStore protocol in one process, for unit tests of the middle without a
database. It mirrors the Postgres store field for field (the shared tests in
tests/integration/test_store.py run against both): the same guards, the same counters, the same
error history and wording. Time comes from an injectable clock, so a test moves a lease past its
expiry with `ManualClock.advance` instead of sleeping.

Each call is one "transaction" under a lock (callers use asyncio.to_thread), and reads one `now`
that never goes backwards and moves at least a microsecond per call, as Postgres' now() differs
between transactions: creation order is the created_at order, as list() and claim() expect.

This module holds MemoryJobStore itself (its "transactions", the webhook marks a status change
makes, intake and single-job reads), its clock and its leader lock; claims, leases and an attempt's
end: store/memory_leases.py; reports and retention: store/memory_reports.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from gpu_orchestrator.core.jobs import (IdempotencyConflict, Job, JobNotFound, JobStatus, QueueFull, TransitionError,
                                        request_fingerprint)
from gpu_orchestrator.core.keys import Quota, check_quota
from gpu_orchestrator.core.webhooks import DEFAULT_EVENTS, due_events
from gpu_orchestrator.store.base import Cost, StartNow, StoreUnavailable, decode_cursor, encode_cursor
from gpu_orchestrator.store.memory_leases import MemoryLeases
from gpu_orchestrator.store.memory_reports import MemoryReports
from gpu_orchestrator.store.memory_rows import Q, R, _copy, _json, _secs

_US = dt.timedelta(microseconds=1)


class ManualClock:
    """A clock a test moves by hand: `clock.advance(31)` instead of `time.sleep(31)`."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class MemoryJobStore(MemoryLeases, MemoryReports):
    def __init__(self, *, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.available = True  # False: every call raises StoreUnavailable (a simulated outage)
        self._mutex = threading.RLock()
        self._jobs: dict[uuid.UUID, Job] = {}  # in creation order
        self._hashes: dict[uuid.UUID, str] = {}  # each job's request fingerprint (Idempotency-Key reuse)
        self._last = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
        self._leaders: dict[int, MemoryLeaderLock] = {}  # lock key -> holder
        self.webhook_next: dict[uuid.UUID, dt.datetime] = {}  # job id -> when its due delivery may be sent

    @contextmanager
    def _tx(self) -> Iterator[dt.datetime]:
        with self._mutex:
            if not self.available:
                raise StoreUnavailable("the job store is unavailable (simulated outage)")
            self._last = max(dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc), self._last + _US)
            yield self._last

    def _set(self, job: Job, **changes: Any) -> Job:
        old = self._jobs.get(job.id, job)
        if job.webhook is not None and "status" in changes and changes["status"] != old.status:
            # What migration 0006's trigger does: mark the events the change makes due.
            delivered = (job.webhook_state or {}).get("delivered") or {}
            gave_up = (job.webhook_state or {}).get("gave_up") or {}
            pending = due_events(old.status.value, changes["status"].value, job.webhook_events, job.webhook_pending,
                                 [*delivered, *gave_up])
            if list(pending) != list(job.webhook_pending):
                changes["webhook_pending"] = tuple(pending)
                self.webhook_next[job.id] = min(self.webhook_next.get(job.id, self._last), self._last)
        new = self._jobs[job.id] = dataclasses.replace(job, **changes)
        return _copy(new)

    def ping(self) -> None:
        with self._tx():
            pass

    def close(self) -> None:
        pass

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, StoreUnavailable)

    def leader_lock(self, key: int) -> "MemoryLeaderLock":
        return MemoryLeaderLock(self, key)

    # -- intake and reads -------------------------------------------------------------------------

    def submit(self, *, app_id: str, params: dict[str, Any], priority: int = 0, max_attempts: int = 3,
               timeout_s: float = 600.0, idempotency_key: str | None = None, max_queued: int | None = None,
               job_id: uuid.UUID | None = None, idempotency_ttl_s: float = 86_400.0, route: str | None = None,
               route_reason: str | None = None, owner: str | None = None,
               quota: Quota | None = None, start: StartNow | None = None, webhook: str | None = None,
               webhook_events: list[str] | None = None) -> tuple[Job, bool]:
        fingerprint = request_fingerprint(params, priority)
        with self._tx() as now:
            if idempotency_key is not None:
                existing = self._by_key(app_id, idempotency_key)
                if existing is not None and existing.created_at < now - _secs(idempotency_ttl_s):
                    self._set(existing, idempotency_key=None)  # expired: the key starts a new job
                elif existing is not None:
                    if self._hashes[existing.id] != fingerprint:
                        raise IdempotencyConflict(app_id, idempotency_key, existing.id)
                    return _copy(existing), False
            if max_queued is not None:
                depth = sum(1 for j in self._jobs.values() if j.app_id == app_id and j.status == Q)
                if depth >= max_queued:
                    raise QueueFull.at(app_id, depth)
            if owner is not None and quota:
                self._check_quota(now, owner, quota)
            job_id = job_id or uuid.uuid4()
            if job_id in self._jobs:
                raise ValueError(f"job {job_id} exists")  # Postgres: a primary key violation
            job = self._jobs[job_id] = Job(
                id=job_id, app_id=app_id, status=Q, priority=priority, params=_json(params), result=None,
                error=None, attempts=0, max_attempts=max_attempts, timeout_s=float(timeout_s), backend=None,
                idempotency_key=idempotency_key, lease_owner=None, lease_expires_at=None, created_at=now,
                started_at=None, finished_at=None, route=route, route_reason=route_reason, owner=owner,
                webhook=webhook, webhook_events=tuple(webhook_events or DEFAULT_EVENTS) if webhook else (),
            )
            self._hashes[job_id] = fingerprint
            if start is not None and self._may_start(job, start.max_in_flight, now):
                job = self._set(job, status=R, attempts=1, claims=1, lease_owner=start.owner,
                          lease_expires_at=now + _secs(start.lease_s), started_at=now, dispatched_at=now)
            return _copy(job), True

    def _may_start(self, new: Job, cap: int, now: dt.datetime) -> bool:
        """No claimable job of the app on its route waits, and fewer than `cap` run (StartNow)."""
        same = [j for j in self._jobs.values() if j.app_id == new.app_id and j.route == new.route and j is not new]
        waiting = any(j.status == Q and (j.run_after is None or j.run_after <= now) for j in same)
        return not waiting and sum(1 for j in same if j.status == R) < cap

    # The job path's async entry points (PostgresJobStore runs these on asyncpg): in memory, direct.
    async def asubmit(self, **kw: Any) -> tuple[Job, bool]:
        return self.submit(**kw)

    async def aget(self, job_id: uuid.UUID) -> Job:
        return self.get(job_id)

    async def acomplete(self, *, job_id: uuid.UUID, owner: str, attempt: int, result: Any, backend: str,
                        cost: Cost | None = None) -> Job:
        return self.complete(job_id=job_id, owner=owner, attempt=attempt, result=result, backend=backend, cost=cost)

    def _check_quota(self, now: dt.datetime, owner: str, quota: Quota) -> None:
        mine = [j for j in self._jobs.values() if j.owner == owner]
        recent = [j.created_at for j in mine if j.created_at > now - _secs(60)]
        check_quota(quota, recent=len(recent), oldest_recent_age_s=(now - min(recent)).total_seconds() if recent else None,
                    active=sum(1 for j in mine if j.status in (Q, R)))

    def _by_key(self, app_id: str, key: str) -> Job | None:
        return next((j for j in self._jobs.values() if j.app_id == app_id and j.idempotency_key == key), None)

    def get(self, job_id: uuid.UUID) -> Job:
        with self._tx():
            if job_id not in self._jobs:
                raise JobNotFound(job_id)
            return _copy(self._jobs[job_id])

    def list(self, *, app_id: str | None = None, status: JobStatus | None = None, limit: int = 50,
             cursor: str | None = None, owner: str | None = None,
             ids: tuple[uuid.UUID, uuid.UUID] | None = None) -> tuple[list[Job], str | None]:
        after = decode_cursor(cursor) if cursor is not None else None
        with self._tx():
            jobs = [j for j in self._jobs.values() if (app_id is None or j.app_id == app_id)
                    and (owner is None or j.owner == owner) and (ids is None or ids[0] <= j.id <= ids[1])
                    and (status is None or j.status == status) and (after is None or (j.created_at, j.id) < after)]
        jobs.sort(key=lambda j: (j.created_at, j.id), reverse=True)
        page = [_copy(j) for j in jobs[:limit]]
        return page, encode_cursor(page[-1]) if len(jobs) > limit else None

    def cancel(self, job_id: uuid.UUID) -> tuple[Job, JobStatus]:
        with self._tx() as now:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.status not in (Q, R):
                raise TransitionError(job_id, job.status.value, "cancel")
            return self._set(job, status=JobStatus.cancelled, finished_at=now, lease_owner=None,
                             lease_expires_at=None, error="cancelled by request"), job.status


class MemoryLeaderLock:
    """One holder per key among the locks of one MemoryJobStore: two routers sharing a store (as
    two replicas share a database) contend. `store.available = False` loses it, as a dropped
    Postgres connection loses the advisory lock."""

    def __init__(self, store: MemoryJobStore, key: int):
        self.store = store
        self.key = key
        self.closed = False  # released for good (a stopping router), as PostgresLeaderLock

    def hold(self) -> bool:
        with self.store._mutex:
            if self.closed or not self.store.available:
                self._drop()
                return False
            return self.store._leaders.setdefault(self.key, self) is self

    def release(self) -> None:
        with self.store._mutex:
            self.closed = True
            self._drop()

    def _drop(self) -> None:
        with self.store._mutex:
            if self.store._leaders.get(self.key) is self:
                del self.store._leaders[self.key]
