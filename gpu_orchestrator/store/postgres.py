"""The job store: Postgres via SQLAlchemy 2.0 Core. Postgres is the single source of truth for jobs.

Every state change is one guarded UPDATE (`WHERE status IN (...)`, plus the lease owner and attempt
for a running job); zero matched rows raises TransitionError instead of passing silently.

Two connection pools: lease renewal and rescue (heartbeat, rescue_expired, release) have their own
small one, so a burst of client reads cannot starve it and let leases expire under running jobs.
Every connection has a statement_timeout and a connect_timeout: a stuck query fails, not hangs.
Connections and migrations: store/pg_engine.py; the SQL: store/pg_sql.py; the leader lock:
store/pg_lock.py (names re-exported here).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
import uuid
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from gpu_orchestrator.core.artifact_refs import artifact_uris
from gpu_orchestrator.core.keys import Quota, check_quota
from gpu_orchestrator.core.jobs import (IdempotencyConflict, Job, JobNotFound, JobStatus, QueueFull, RetryPolicy,
                                        TransitionError, request_fingerprint)
from gpu_orchestrator.store.base import (ANY_ROUTE, LEASE_EXPIRED, MSG_GIVE_UP, RELEASED, AppQueueStats, Cost, CostRow,
                                         LeaseEnd, MinuteCount, Pruned, ResultNotStorable, Rescued, StartNow, clip_error,
                                         decode_cursor, encode_cursor)
from gpu_orchestrator.store.pg_async import AsyncJobPath
from gpu_orchestrator.store.pg_engine import (PING_IDLE_S, connect_args, create_engine, fresh_on_stale,
                                              is_transient_db_error, ping_when_idle, run_migrations, sqlalchemy_url)
from gpu_orchestrator.store.pg_listen import Listener
from gpu_orchestrator.store.pg_lock import PostgresLeaderLock
from gpu_orchestrator.core.webhooks import DEFAULT_EVENTS
from gpu_orchestrator.store.pg_webhooks import CHANNEL as WEBHOOK_CHANNEL
from gpu_orchestrator.store.pg_sql import (COLS, COMPLETE_SET, COST_SET, GET, GRANT_RESULTS, INSERT_QUEUED, INSERT_STARTED,
                                           SET_WEBHOOK,
                                           PRUNE_LOCK, QUEUED_DEPTH, STATUS, append_error, claim_lock, cost_args,
                                           insert_args, leased_update, lock_key)

__all__ = ["AppQueueStats", "JobStore", "PING_IDLE_S", "PostgresJobStore", "PostgresLeaderLock", "Rescued",
           "ResultNotStorable", "connect_args", "create_engine", "decode_cursor", "encode_cursor", "is_transient_db_error",
           "ping_when_idle", "run_migrations", "sqlalchemy_url"]

log = logging.getLogger(__name__)


class PostgresJobStore:
    def __init__(self, engine: Engine, lease_engine: Engine | None = None, fast: AsyncJobPath | None = None):
        self.engine = engine
        self.lease_engine = lease_engine or engine
        self.fast = fast  # the job path's statements on asyncpg (pg_async.py); None: all through SQLAlchemy
        self.url = engine.url.render_as_string(hide_password=False)
        self._listeners: list[Listener] = []

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        migrate: bool = True,
        pool_size: int = 5,
        max_overflow: int = 5,
        lease_pool_size: int = 2,
        fast_pool_size: int = 10,
        statement_timeout_s: float | None = 30.0,
        connect_timeout_s: float | None = 10.0,
        prepared_statements: bool = True,
    ) -> "PostgresJobStore":
        args = connect_args(statement_timeout_s=statement_timeout_s, connect_timeout_s=connect_timeout_s)
        # Postgres connections per router replica, at most: pool_size + max_overflow (SQLAlchemy: reads,
        # reports, claims) + lease_pool_size + 1 (leases) + fast_pool_size (the job path on asyncpg)
        # + 1 (the key cache's LISTEN): 24 by default. Size max_connections for the replicas you run.
        # Survive a Postgres restart without surfacing dead connections: the lease pool, used every
        # few seconds, checks each connection before use; the busy pool those idle for a while.
        engine = ping_when_idle(create_engine(url, pool_size=pool_size, max_overflow=max_overflow, connect_args=args))
        lease_engine = create_engine(url, pool_pre_ping=True, pool_size=lease_pool_size, max_overflow=1,
                                     pool_timeout=10, connect_args=args)
        if migrate:
            run_migrations(engine)
        fast = AsyncJobPath(url, statement_timeout_s=statement_timeout_s, connect_timeout_s=connect_timeout_s or 10.0,
                            prepared=prepared_statements, pool_size=fast_pool_size)
        return cls(engine, lease_engine, fast=fast)

    def listen(self, channel: str, on_message: Callable[[str], None], on_state: Callable[[bool], None]) -> Listener:
        """A LISTEN on `channel` (store/pg_listen.py), stopped with the store."""
        listener = Listener(self.url, channel, on_message, on_state).start()
        self._listeners.append(listener)
        return listener

    def close(self) -> None:
        for listener in self._listeners:
            listener.stop()
        if self.fast is not None:
            self.fast.close()
        self.engine.dispose()
        if self.lease_engine is not self.engine:
            self.lease_engine.dispose()

    @fresh_on_stale
    def ping(self) -> None:
        """Raises (an sqlalchemy error) when Postgres cannot answer."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient_db_error(exc)

    def leader_lock(self, key: int) -> "PostgresLeaderLock":
        return PostgresLeaderLock(self.engine, key)

    # -- the job path on the event loop (asyncpg where it can: pg_async.py) ----------------------------

    async def asubmit(self, **kw: Any) -> tuple[Job, bool]:
        """submit(); a submit with an Idempotency-Key or a quota takes the synchronous path."""
        if (self.fast is None or kw.get("idempotency_key") is not None or (kw.get("owner") and kw.get("quota"))
                or kw.get("webhook") is not None):
            return await asyncio.to_thread(functools.partial(self.submit, **kw))
        for k in ("idempotency_key", "idempotency_ttl_s", "quota", "webhook", "webhook_events"):
            kw.pop(k, None)
        return await self.fast.submit(**kw), True

    async def aget(self, job_id: uuid.UUID) -> Job:
        if self.fast is None:
            return await asyncio.to_thread(self.get, job_id)
        try:
            row = await self.fast.get(job_id)
        except Exception as e:  # a pooled connection found dead: once more, as get() does
            if not is_transient_db_error(e):
                raise
            row = await self.fast.get(job_id)
        if row is None:
            raise JobNotFound(job_id)
        return Job.from_row(row)

    async def acomplete(self, *, job_id: uuid.UUID, owner: str, attempt: int, result: Any, backend: str,
                        cost: Cost | None = None) -> Job:
        if self.fast is None:
            return await asyncio.to_thread(functools.partial(self.complete, job_id=job_id, owner=owner, attempt=attempt,
                                                             result=result, backend=backend, cost=cost))
        return await self.fast.complete(job_id=job_id, owner=owner, attempt=attempt, result=result, backend=backend,
                                        cost=cost, grant=sorted(set(artifact_uris(result))))

    # -- intake -----------------------------------------------------------------------------------

    def submit(
        self,
        *,
        app_id: str,
        params: dict[str, Any],
        priority: int = 0,
        max_attempts: int = 3,
        timeout_s: float = 600.0,
        idempotency_key: str | None = None,
        max_queued: int | None = None,
        job_id: uuid.UUID | None = None,
        idempotency_ttl_s: float = 86_400.0,
        route: str | None = None,
        route_reason: str | None = None,
        owner: str | None = None,
        quota: Quota | None = None,
        start: StartNow | None = None,
        webhook: str | None = None,
        webhook_events: list[str] | None = None,
    ) -> tuple[Job, bool]:
        """Insert a job: queued, or running under `start`'s lease when the app may start it now
        (see StartNow). Returns (job, created); created is False for a repeated Idempotency-Key.
        `quota`: the owner's limits, checked under a lock per owner so concurrent submits through
        any router replica cannot overshoot them (QuotaExceeded). `max_queued` is a soft limit:
        counted without a lock, so concurrent submits may pass it by a few (a lock per app held
        through every submit's commit serialised them all).

        Keys are scoped per app and held for `idempotency_ttl_s` after the job was created; a key
        reused with another body (params or priority) raises IdempotencyConflict.
        """
        fingerprint = request_fingerprint(params, priority) if idempotency_key is not None else None
        with self.engine.begin() as conn:
            if idempotency_key is not None:
                assert fingerprint is not None
                # An expired key is released (its old job keeps everything else) and starts a new job.
                conn.execute(
                    sa.text("UPDATE jobs SET idempotency_key = NULL WHERE app_id = :a AND idempotency_key = :k "
                            "AND created_at < now() - make_interval(secs => :ttl)"),
                    {"a": app_id, "k": idempotency_key, "ttl": idempotency_ttl_s},
                )
                existing = self._by_key(conn, app_id, idempotency_key, fingerprint)
                if existing is not None:
                    return existing, False
            if max_queued is not None:
                depth = conn.execute(sa.text(QUEUED_DEPTH), {"app_id": app_id}).scalar_one()
                if depth >= max_queued:
                    raise QueueFull.at(app_id, depth)
            if owner is not None and quota:
                self._check_quota(conn, owner, quota)
            args = insert_args(job_id=job_id, app_id=app_id, params=params, priority=priority,
                               max_attempts=max_attempts, timeout_s=timeout_s, key=idempotency_key,
                               fingerprint=fingerprint, route=route, reason=route_reason, owner=owner, start=start)
            if start is not None:
                # The claim's own lock: the in-flight bound stays exact against claims and other starts.
                conn.execute(lock_key(claim_lock(app_id, route)))
                row = conn.execute(sa.text(INSERT_STARTED), args).first()
            else:
                row = conn.execute(sa.text(INSERT_QUEUED), args).first()
            if row is None:  # lost a race with the same key
                existing = self._by_key(conn, app_id, idempotency_key, fingerprint)  # type: ignore[arg-type]
                assert existing is not None
                return existing, False
            if webhook is not None:  # in the insert's transaction; a job started at once is due its `start`
                row = conn.execute(sa.text(SET_WEBHOOK), {"id": row.id, "url": webhook,
                                                          "events": list(webhook_events or DEFAULT_EVENTS)}).first()
                if row.webhook_pending:  # due now: wake a sender (the trigger does this for later changes)
                    conn.execute(sa.text("SELECT pg_notify(:c, '')"), {"c": WEBHOOK_CHANNEL})
            return Job.from_row(row), True

    @staticmethod
    def _check_quota(conn: Connection, owner: str, quota: Quota) -> None:
        conn.execute(lock_key(f"owner:{owner}"))
        recent, oldest_age, active = 0, None, 0
        if quota.jobs_per_min is not None:  # each count only when its limit is set: two index scans
            recent, oldest_age = conn.execute(sa.text(
                "SELECT count(*), extract(epoch FROM now() - min(created_at)) FROM jobs "
                "WHERE owner = :o AND created_at > now() - interval '60 seconds'"), {"o": owner}).one()
        if quota.max_queued is not None:
            active = conn.execute(sa.text(
                "SELECT count(*) FROM jobs WHERE owner = :o AND status IN ('queued', 'running')"), {"o": owner}).scalar_one()
        check_quota(quota, recent=recent, oldest_recent_age_s=float(oldest_age or 0), active=active)

    def _by_key(self, conn: Connection, app_id: str, key: str, fingerprint: str) -> Job | None:
        row = conn.execute(
            sa.text(f"SELECT {COLS}, request_hash FROM jobs WHERE app_id = :a AND idempotency_key = :k"),
            {"a": app_id, "k": key},
        ).first()
        if row is None:
            return None
        job = Job.from_row(row)
        # Rows from before request_hash existed: fingerprint what they stored.
        stored = row.request_hash or request_fingerprint(job.params, job.priority)
        if stored != fingerprint:
            raise IdempotencyConflict(app_id, key, job.id)
        return job

    # -- reads ------------------------------------------------------------------------------------

    @fresh_on_stale
    def get(self, job_id: uuid.UUID) -> Job:
        with self.engine.connect() as conn:
            row = conn.execute(sa.text(GET), {"id": job_id}).first()
        if row is None:
            raise JobNotFound(job_id)
        return Job.from_row(row)

    @fresh_on_stale
    def list(
        self,
        *,
        app_id: str | None = None,
        status: JobStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
        owner: str | None = None,
        ids: tuple[uuid.UUID, uuid.UUID] | None = None,
    ) -> tuple[list[Job], str | None]:
        """Newest first, keyset-paginated; returns (jobs, next_cursor). `owner`: that key's jobs only;
        `ids`: ids in that range only (a short id's, core.jobs.id_prefix_range: the primary key's index)."""
        where, args = [], {"limit": limit + 1}
        if ids is not None:
            where.append("id BETWEEN :id_lo AND :id_hi")
            args.update(id_lo=ids[0], id_hi=ids[1])
        if owner is not None:
            where.append("owner = :owner")
            args["owner"] = owner
        if app_id is not None:
            where.append("app_id = :app_id")
            args["app_id"] = app_id
        if status is not None:
            where.append("status = :status")
            args["status"] = status.value
        if cursor is not None:
            created, cid = decode_cursor(cursor)
            where.append("(created_at, id) < (:c_created, :c_id)")
            args.update(c_created=created, c_id=cid)
        sql = f"SELECT {COLS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT :limit"
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(sql), args).all()
        jobs = [Job.from_row(r) for r in rows[:limit]]
        nxt = encode_cursor(jobs[-1]) if len(rows) > limit else None
        return jobs, nxt

    @fresh_on_stale
    def apps_with_queued(self) -> dict[str, set[str | None]]:
        """Apps with at least one queued job, each with the routes its queued jobs wait on (None:
        local; a skip scan over the partial queued index)."""
        out: dict[str, set[str | None]] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(sa.text("SELECT DISTINCT app_id, route FROM jobs WHERE status = 'queued'")):
                out.setdefault(r.app_id, set()).add(r.route)
        return out

    @staticmethod
    def _queued_where(frm: str | None, ids: Any, older_than_s: float | None) -> str:
        """The WHERE for an app's queued jobs on route `frm` (None: local, ANY_ROUTE: every route)."""
        sql = "app_id = :app AND status = 'queued'"
        if frm != ANY_ROUTE:
            sql += " AND route IS NOT DISTINCT FROM :frm"
        if ids is not None:
            sql += " AND id = ANY(CAST(:ids AS uuid[]))"
        if older_than_s is not None:
            sql += " AND created_at < now() - make_interval(secs => :age)"
        return sql

    def fail_queued(self, app_id: str, error: str, *, older_than_s: float | None = None,
                    route: str | None = None) -> list[uuid.UUID]:
        """queued -> failed for the app's queued jobs on `route` (they can never run), or only those
        submitted more than `older_than_s` ago; returns their ids."""
        with self.engine.begin() as conn:
            return list(conn.execute(
                sa.text(f"UPDATE jobs SET status = 'failed', finished_at = now(), error = :error, run_after = NULL "
                        f"WHERE {self._queued_where(route, None, older_than_s)} RETURNING id"),
                {"app": app_id, "error": error, "age": older_than_s, "frm": route},
            ).scalars())

    def reroute_queued(self, app_id: str, backend: str | None, reason: str, *, frm: str | None = None,
                       ids: Any = None, older_than_s: float | None = None) -> list[uuid.UUID]:
        """The app's queued jobs on route `frm` go to `backend` (None: local): a model that cannot
        run here after all, or a cloud backend this stack no longer has."""
        with self.engine.begin() as conn:
            return list(conn.execute(
                sa.text(f"UPDATE jobs SET route = :b, route_reason = :r WHERE {self._queued_where(frm, ids, older_than_s)} "
                        f"RETURNING id"),
                {"app": app_id, "b": backend, "r": reason, "frm": frm, "age": older_than_s,
                 "ids": None if ids is None else [str(i) for i in ids]}).scalars())

    @fresh_on_stale
    def cost_summary(self, *, since: dt.datetime, until: dt.datetime, app_id: str | None = None,
                     group_by: str = "backend") -> list[CostRow]:
        key = {"backend": "coalesce(route, 'local')", "app": "app_id",
               "day": "to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"}[group_by]
        sql = (f"SELECT {key} AS k, count(*) AS n, count(*) FILTER (WHERE route IS NOT NULL) AS cloud, "
               f"coalesce(sum(gpu_seconds), 0) AS gs, coalesce(sum(cost_usd), 0) AS usd FROM jobs "
               f"WHERE finished_at IS NOT NULL AND finished_at >= :since AND finished_at < :until")
        if app_id is not None:
            sql += " AND app_id = :app"
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(sql + " GROUP BY 1 ORDER BY 1"), {"since": since, "until": until, "app": app_id})
            return [CostRow(r.k, r.n, r.cloud, float(r.gs), float(r.usd)) for r in rows]

    @fresh_on_stale
    def queue_stats(self, *, cloud: bool = False, app_id: str | None = None) -> dict[str, AppQueueStats]:
        # Local demand by default (the arbiter's): jobs sent to a cloud backend ask nothing of our GPUs.
        sql = sa.text(
            "SELECT app_id, count(*) FILTER (WHERE status = 'queued') AS queued, "
            "count(*) FILTER (WHERE status = 'running') AS running, "
            "extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'queued')) AS oldest, "
            "max(priority) FILTER (WHERE status = 'queued') AS maxprio "
            f"FROM jobs WHERE status IN ('queued', 'running') AND route IS {'NOT ' if cloud else ''}NULL "
            f"{'AND app_id = :app ' if app_id is not None else ''}GROUP BY app_id"
        )
        with self.engine.connect() as conn:
            return {
                r.app_id: AppQueueStats(r.app_id, r.queued, r.running, float(r.oldest) if r.oldest is not None else None, r.maxprio)
                for r in conn.execute(sql, {"app": app_id})
            }

    @fresh_on_stale
    def jobs_per_minute(self, *, minutes: int) -> list[MinuteCount]:
        # A range scan of jobs_list_idx (created_at): the last hour, whatever the table's size.
        sql = sa.text(
            "SELECT date_trunc('minute', created_at) AS m, status, count(*) AS n FROM jobs "
            "WHERE created_at > now() - make_interval(mins => :m) GROUP BY 1, 2 ORDER BY 1, 2"
        )
        with self.engine.connect() as conn:
            return [MinuteCount(r.m, JobStatus(r.status), r.n) for r in conn.execute(sql, {"m": minutes})]

    @fresh_on_stale
    def service_times(self, *, window_s: float = 3600.0) -> dict[str, float]:
        """Mean run time (started -> finished) of each app's recently succeeded jobs, in seconds."""
        sql = sa.text(
            "SELECT app_id, avg(extract(epoch FROM finished_at - started_at)) AS s FROM jobs "
            "WHERE status = 'succeeded' AND route IS NULL AND finished_at > now() - make_interval(secs => :w) GROUP BY app_id"
        )
        with self.engine.connect() as conn:
            return {r.app_id: float(r.s) for r in conn.execute(sql, {"w": window_s}) if r.s is not None}

    # -- dispatch ---------------------------------------------------------------------------------

    def claim(self, *, app_id: str, owner: str, limit: int, lease_s: float, max_in_flight: int,
              route: str | None = None) -> list[Job]:
        """Move up to `limit` queued jobs of one app to running, highest priority first, skipping
        retries still in their backoff. Each claim is a new attempt number (`claims`).

        The per-app advisory lock makes the in-flight bound exact across router replicas;
        SKIP LOCKED keeps claimers from blocking on rows another transaction holds (e.g. cancel).
        """
        with self.engine.begin() as conn:
            conn.execute(lock_key(claim_lock(app_id, route)))
            running = conn.execute(
                sa.text("SELECT count(*) FROM jobs WHERE app_id = :a AND status = 'running' "
                        "AND route IS NOT DISTINCT FROM :route"), {"a": app_id, "route": route}
            ).scalar_one()
            n = min(limit, max_in_flight - running)
            if n <= 0:
                return []
            rows = conn.execute(
                sa.text(
                    f"UPDATE jobs SET status = 'running', attempts = attempts + 1, claims = claims + 1, "
                    f"lease_owner = :owner, lease_expires_at = now() + make_interval(secs => :lease), "
                    f"started_at = coalesce(started_at, now()), dispatched_at = NULL, run_after = NULL "
                    f"WHERE id IN (SELECT id FROM jobs WHERE app_id = :a AND status = 'queued' "
                    f"AND route IS NOT DISTINCT FROM :route AND (run_after IS NULL OR run_after <= now()) "
                    f"ORDER BY priority DESC, created_at, id LIMIT :n FOR UPDATE SKIP LOCKED) "
                    f"RETURNING {COLS}"
                ),
                {"a": app_id, "owner": owner, "lease": lease_s, "n": n, "route": route},
            ).all()
        jobs = [Job.from_row(r) for r in rows]
        jobs.sort(key=lambda j: (-j.priority, j.created_at, j.id))
        return jobs

    def mark_dispatched(self, *, job_id: uuid.UUID, owner: str, attempt: int) -> None:
        """Record that this claim is being handed to a model replica: from now on losing the lease
        counts as a lost run (before it, the claim goes back to the queue for free)."""
        with self.engine.begin() as conn:
            n = conn.execute(
                sa.text("UPDATE jobs SET dispatched_at = now() WHERE id = :id AND status = 'running' "
                        "AND lease_owner = :owner AND claims = :attempt"),
                {"id": job_id, "owner": owner, "attempt": attempt},
            ).rowcount
            if n == 0:
                raise TransitionError(job_id, self._status(conn, job_id), "dispatch")

    def heartbeat(
        self, *, owner: str, leases: Iterable[tuple[uuid.UUID, int]], lease_s: float
    ) -> set[tuple[uuid.UUID, int]]:
        """Extend the leases this owner still holds, each (job id, attempt); returns those held.
        An older attempt of a job that was rescued and claimed again is not renewed."""
        pairs = list(leases)
        if not pairs:
            return set()
        with self.lease_engine.begin() as conn:
            rows = conn.execute(
                sa.text(
                    "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease) "
                    "FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS h(id, attempt) "
                    "WHERE jobs.id = h.id AND jobs.claims = h.attempt AND jobs.status = 'running' "
                    "AND jobs.lease_owner = :owner RETURNING jobs.id, jobs.claims"
                ),
                {"ids": [str(i) for i, _ in pairs], "attempts": [a for _, a in pairs], "owner": owner,
                 "lease": lease_s},
            ).all()
        return {(r.id, r.claims) for r in rows}

    def set_cloud_ref(self, *, job_id: uuid.UUID, owner: str, attempt: int, ref: dict[str, Any]) -> None:
        """Record the provider's id for this attempt's run (before waiting on it)."""
        with self.engine.begin() as conn:
            n = conn.execute(
                sa.text("UPDATE jobs SET cloud_ref = CAST(:ref AS jsonb) WHERE id = :id AND status = 'running' "
                        "AND lease_owner = :owner AND claims = :attempt"),
                {"id": job_id, "owner": owner, "attempt": attempt, "ref": json.dumps(ref)},
            ).rowcount
            if n == 0:
                raise TransitionError(job_id, self._status(conn, job_id), "record its cloud run")

    def complete(self, *, job_id: uuid.UUID, owner: str, attempt: int, result: Any, backend: str,
                 cost: Cost | None = None) -> Job:
        """running -> succeeded, only for the lease holder of this very attempt. ResultNotStorable
        when Postgres refuses the result itself (a NUL or a lone surrogate in a string)."""
        try:
            # The owner of the job may download what its result names (artifact_owners).
            return self._leased_update(
                COMPLETE_SET, {"result": json.dumps(result, default=str), "backend": backend, **cost_args(cost)},
                job_id=job_id, owner=owner, attempt=attempt, wanted="complete", grant=sorted(set(artifact_uris(result))),
            )
        except sa.exc.DBAPIError as e:
            if is_transient_db_error(e):
                raise
            orig = e.orig or e
            why = (str(orig).strip().splitlines() or [""])[0]  # psycopg2 puts the reason first, context after
            raise ResultNotStorable(f"{type(orig).__name__}: {why}") from e

    def fail_attempt(
        self, *, job_id: uuid.UUID, owner: str, attempt: int, error: str, retryable: bool = True,
        backend: str | None = None, kind: str = "error", retry_delay_s: float = 0.0, cost: Cost | None = None,
    ) -> Job:
        """running -> queued (attempts left and retryable; claimable after `retry_delay_s`) or
        failed; guarded like complete(). The error joins the job's `errors` history."""
        requeue = ":retry AND attempts < max_attempts"
        return self._leased_update(
            f"status = CASE WHEN {requeue} THEN 'queued' ELSE 'failed' END, "
            f"finished_at = CASE WHEN {requeue} THEN NULL ELSE now() END, "
            f"run_after = CASE WHEN {requeue} THEN now() + make_interval(secs => :delay) END, "
            f"error = :error, backend = coalesce(:backend, backend), dispatched_at = NULL, {COST_SET}, "
            + append_error(":kind", ":error"),
            {"error": clip_error(error), "retry": retryable, "backend": backend, "kind": kind, "delay": retry_delay_s,
             **cost_args(cost)},
            job_id=job_id, owner=owner, attempt=attempt, wanted="record a failed attempt",
        )

    def _leased_update(self, set_sql: str, args: dict[str, Any], *, job_id: uuid.UUID, owner: str, attempt: int,
                       wanted: str, grant: list[str] | None = None) -> Job:
        """An attempt ends (see pg_sql.leased_update); `grant`: result artifacts for the job's owner."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.text(leased_update(set_sql)), {"id": job_id, "owner": owner, "attempt": attempt,
                                                                 **args}).first()
            if row is None:
                raise TransitionError(job_id, self._status(conn, job_id), wanted)
            if grant and row.owner is not None:
                conn.execute(sa.text(GRANT_RESULTS), {"o": row.owner, "j": job_id, "uris": grant})
        return Job.from_row(row)

    def cancel(self, job_id: uuid.UUID) -> tuple[Job, JobStatus]:
        """queued|running -> cancelled. Returns (job, previous status)."""
        with self.engine.begin() as conn:
            prev = conn.execute(sa.text("SELECT status FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id}).scalar()
            if prev is None:
                raise JobNotFound(job_id)
            row = conn.execute(
                sa.text(
                    f"UPDATE jobs SET status = 'cancelled', finished_at = now(), lease_owner = NULL, lease_expires_at = NULL, "
                    f"error = 'cancelled by request' "
                    f"WHERE id = :id AND status IN ('queued', 'running') RETURNING {COLS}"
                ),
                {"id": job_id},
            ).first()
            if row is None:
                raise TransitionError(job_id, prev, "cancel")
        return Job.from_row(row), JobStatus(prev)

    def rescue_expired(self, policy: RetryPolicy = RetryPolicy()) -> list[Rescued]:
        """Running jobs whose lease expired (their router died or lost Postgres for longer than the
        lease). Not the job's fault, so no attempt is charged: a claim never handed to a model
        replica goes back as it was; a run that was on one counts in lost_attempts, comes back
        after a backoff, and fails the job once it reaches policy.max_lost_attempts."""
        return self._requeue_leases("lease_expires_at < now()", {}, policy=policy, how=LEASE_EXPIRED,
                                    skip_locked=True)

    def release(self, *, owner: str, policy: RetryPolicy = RetryPolicy()) -> list[Rescued]:
        """A router stopping gracefully hands back every lease it holds at once (one UPDATE):
        running -> queued at once, attempt refunded. A run that was already on a model replica still
        counts in lost_attempts: Serve also stops unhealthy routers, and a job making its router
        unhealthy must not loop for ever."""
        return self._requeue_leases("lease_owner = :owner", {"owner": owner}, policy=policy, how=RELEASED,
                                    skip_locked=False)

    def _requeue_leases(self, where: str, args: dict[str, Any], *, policy: RetryPolicy, how: LeaseEnd,
                        skip_locked: bool) -> list[Rescued]:
        sql = (
            f"WITH x AS (SELECT id, dispatched_at IS NOT NULL AS lost FROM jobs "
            f"WHERE status = 'running' AND {where} FOR UPDATE{' SKIP LOCKED' if skip_locked else ''}), "
            f"m AS (SELECT j.id, x.lost, x.lost AND j.lost_attempts + 1 >= :cap AS give_up, "
            f"CASE WHEN x.lost AND j.lost_attempts + 1 >= :cap THEN format(:msg_give_up, j.lost_attempts + 1, j.claims) "
            f"WHEN x.lost THEN format(:msg_lost, j.claims, j.lost_attempts + 1, :cap) "
            f"ELSE format(:msg_undispatched, j.claims) END AS msg FROM jobs j JOIN x ON j.id = x.id) "
            f"UPDATE jobs j SET "
            f"status = CASE WHEN m.give_up THEN 'failed' ELSE 'queued' END, "
            f"finished_at = CASE WHEN m.give_up THEN now() END, "
            f"attempts = greatest(j.attempts - 1, 0), "
            f"lost_attempts = j.lost_attempts + m.lost::int, "
            f"run_after = CASE WHEN m.lost AND NOT m.give_up AND :backoff THEN now() + make_interval(secs => "
            f"least(:bmax, :base * power(2, j.lost_attempts)) * (0.5 + random() / 2)) END, "
            f"error = m.msg, "
            + append_error("CASE WHEN m.lost THEN :kind_lost ELSE :kind_undispatched END", "m.msg", "j.")
            + ", lease_owner = NULL, lease_expires_at = NULL, dispatched_at = NULL "
            "FROM m WHERE j.id = m.id RETURNING j.id, j.app_id, j.status, j.error, m.lost"
        )
        params = {
            **args, "cap": policy.max_lost_attempts, "backoff": how.backoff, "bmax": policy.backoff_max_s,
            "base": policy.backoff_s, "kind_lost": how.kind_lost, "kind_undispatched": how.kind_undispatched,
            "msg_lost": how.msg_lost, "msg_undispatched": how.msg_undispatched, "msg_give_up": MSG_GIVE_UP,
        }
        with self.lease_engine.begin() as conn:
            rows = conn.execute(sa.text(sql), params).all()
        return [Rescued(r.id, r.app_id, JobStatus(r.status), r.error, r.lost) for r in rows]

    _PRUNABLE = ("finished_at IS NOT NULL AND finished_at < now() - make_interval(secs => :age) "
                 "AND status IN ('succeeded', 'failed', 'cancelled')")
    # The batch: the oldest such rows, skipping any another transaction holds.
    PRUNE_PICK = f"SELECT id FROM jobs WHERE {_PRUNABLE} ORDER BY finished_at LIMIT :n FOR UPDATE SKIP LOCKED"

    def prune(self, *, older_than_s: float, limit: int) -> list[Pruned] | None:
        """Delete up to `limit` terminal jobs finished more than `older_than_s` ago, oldest first, in
        one short transaction (a range scan of jobs_finished_idx; rows another transaction holds are
        skipped, never waited for). One pruner at a time across router replicas (a transaction-level
        advisory lock): None when another holds it."""
        with self.engine.begin() as conn:
            if not conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": PRUNE_LOCK}).scalar():
                return None
            rows = conn.execute(sa.text(
                f"DELETE FROM jobs WHERE id IN ({self.PRUNE_PICK}) RETURNING id, app_id, params, result"),
                {"age": older_than_s, "n": limit}).all()
            # Result grants go with their job (ON DELETE CASCADE); an upload's grant with its file.
            uploads = sorted({u for r in rows for u in artifact_uris(r.params)})
            if uploads:
                conn.execute(sa.text("DELETE FROM artifact_owners WHERE uri = ANY(CAST(:u AS text[]))"), {"u": uploads})
        return [Pruned(r.id, r.app_id, r.params or {}, r.result) for r in rows]

    @fresh_on_stale
    def prunable(self, *, older_than_s: float) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT app_id, count(*) AS n FROM jobs WHERE {self._PRUNABLE} GROUP BY app_id"),
                                {"age": older_than_s})
            return {r.app_id: r.n for r in rows}

    def _status(self, conn: Connection, job_id: uuid.UUID) -> str | None:
        return conn.execute(sa.text(STATUS), {"id": job_id}).scalar()


JobStore = PostgresJobStore  # the old name; goes once every caller names PostgresJobStore
