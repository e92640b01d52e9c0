"""MemoryJobStore: the JobStore protocol in one process, for unit tests of the middle without a
database. It mirrors the Postgres store field for field (the shared tests in
tests/integration/test_store.py run against both): the same guards, the same counters, the same
error history and wording. Time comes from an injectable clock, so a test moves a lease past its
expiry with `ManualClock.advance` instead of sleeping.

Each call is one "transaction" under a lock (callers use asyncio.to_thread), and reads one `now`
that never goes backwards and moves at least a microsecond per call, as Postgres' now() differs
between transactions: creation order is the created_at order, as list() and claim() expect.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import datetime as dt
import json
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from gpu_orchestrator.core.apps import check_text
from gpu_orchestrator.core.keys import Quota, check_quota
from gpu_orchestrator.core.webhooks import DEFAULT_EVENTS, due_events
from gpu_orchestrator.core.jobs import (IdempotencyConflict, Job, JobNotFound, JobStatus, QueueFull, RetryPolicy,
                                        TransitionError, request_fingerprint)
from gpu_orchestrator.store.base import (ANY_ROUTE, LEASE_EXPIRED, MAX_ERRORS, MSG_GIVE_UP, RELEASED, AppQueueStats, Cost, CostRow, LeaseEnd,
                                         MinuteCount, LeaseKey, Pruned, Rescued, ResultNotStorable, StartNow, StoreUnavailable,
                                         clip_error, decode_cursor, encode_cursor)

_US = dt.timedelta(microseconds=1)
Q, R = JobStatus.queued, JobStatus.running


class ManualClock:
    """A clock a test moves by hand: `clock.advance(31)` instead of `time.sleep(31)`."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def _json(value: Any, default: Callable[[Any], Any] | None = None) -> Any:
    # What a JSONB round trip does: a copy, tuples become lists, keys become strings.
    return json.loads(json.dumps(value, default=default))


# What Postgres answers for a NUL in a jsonb string (a lone surrogate gets another message there).
_JSONB_REFUSES = "UntranslatableCharacter: unsupported Unicode escape sequence"


def _secs(s: float) -> dt.timedelta:
    return dt.timedelta(seconds=s)


def _copy(job: Job) -> Job:
    # Callers get their own Job, as from a database row: changing its params changes nothing here.
    return dataclasses.replace(job, params=copy.deepcopy(job.params), result=copy.deepcopy(job.result),
                               errors=tuple(dict(e) for e in job.errors))


class MemoryJobStore:
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

    # -- the dispatcher's -------------------------------------------------------------------------

    def apps_with_queued(self) -> dict[str, set[str | None]]:
        with self._tx():
            out: dict[str, set[str | None]] = {}
            for j in self._jobs.values():
                if j.status == Q:
                    out.setdefault(j.app_id, set()).add(j.route)
            return out

    def _queued(self, app_id: str, frm: str | None, ids: Any, older_than_s: float | None, now: dt.datetime) -> list[Job]:
        keep = None if ids is None else set(ids)
        return [j for j in self._jobs.values() if j.app_id == app_id and j.status == Q
                and (frm == ANY_ROUTE or j.route == frm) and (keep is None or j.id in keep)
                and (older_than_s is None or j.created_at < now - _secs(older_than_s))]

    def queue_stats(self, *, cloud: bool = False, app_id: str | None = None) -> dict[str, AppQueueStats]:
        with self._tx() as now:
            out = {}
            local = [j for j in self._jobs.values() if j.status in (Q, R) and (j.route is not None) == cloud
                     and (app_id is None or j.app_id == app_id)]
            for app in {j.app_id for j in local}:
                queued = [j for j in local if j.app_id == app and j.status == Q]
                running = sum(1 for j in local if j.app_id == app and j.status == R)
                oldest = (now - min(j.created_at for j in queued)).total_seconds() if queued else None
                out[app] = AppQueueStats(app, len(queued), running, oldest,
                                         max(j.priority for j in queued) if queued else None)
            return out

    def jobs_per_minute(self, *, minutes: int) -> list[MinuteCount]:
        with self._tx() as now:
            counts: dict[tuple[dt.datetime, JobStatus], int] = {}
            for j in self._jobs.values():
                if j.created_at > now - _secs(60 * minutes):
                    key = (j.created_at.replace(second=0, microsecond=0), j.status)
                    counts[key] = counts.get(key, 0) + 1
            return [MinuteCount(m, st, n) for (m, st), n in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1].value))]

    def service_times(self, *, window_s: float = 3600.0) -> dict[str, float]:
        with self._tx() as now:
            runs: dict[str, list[float]] = {}
            for j in self._jobs.values():
                if j.status == JobStatus.succeeded and j.route is None and j.finished_at > now - _secs(window_s):
                    runs.setdefault(j.app_id, []).append((j.finished_at - j.started_at).total_seconds())
            return {app: sum(v) / len(v) for app, v in runs.items()}

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

    def cost_summary(self, *, since: dt.datetime, until: dt.datetime, app_id: str | None = None,
                     group_by: str = "backend") -> list[CostRow]:
        key = {"backend": lambda j: j.route or "local", "app": lambda j: j.app_id,
               "day": lambda j: j.finished_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d")}[group_by]
        groups: dict[str, list[Job]] = {}
        with self._tx():
            for j in self._jobs.values():
                if j.finished_at is not None and since <= j.finished_at < until and app_id in (None, j.app_id):
                    groups.setdefault(key(j), []).append(j)
        return [CostRow(k, len(js), sum(1 for j in js if j.route), sum(j.gpu_seconds or 0.0 for j in js),
                        sum(j.cost_usd or 0.0 for j in js)) for k, js in sorted(groups.items())]

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

    def _prunable(self, older_than_s: float, now: dt.datetime) -> list[Job]:
        cutoff = now - dt.timedelta(seconds=older_than_s)
        return sorted((j for j in self._jobs.values() if j.status.terminal and j.finished_at is not None
                       and j.finished_at < cutoff), key=lambda j: j.finished_at)

    def prune(self, *, older_than_s: float, limit: int) -> list[Pruned] | None:
        with self._tx() as now:
            old = self._prunable(older_than_s, now)[:limit]
            for j in old:
                del self._jobs[j.id]
                self._hashes.pop(j.id, None)
            return [Pruned(j.id, j.app_id, j.params, j.result) for j in old]

    def prunable(self, *, older_than_s: float) -> dict[str, int]:
        with self._tx() as now:
            return dict(collections.Counter(j.app_id for j in self._prunable(older_than_s, now)))

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
