"""Postgres job statements, intake and single-job reads: submit (Idempotency-Key, quota, a start
under a lease at once, a webhook), get, list, cancel. A mixin of PostgresJobStore (store/postgres.py)."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from gpu_orchestrator.core.jobs import (IdempotencyConflict, Job, JobNotFound, JobStatus, QueueFull, TransitionError,
                                        request_fingerprint)
from gpu_orchestrator.core.keys import Quota, check_quota
from gpu_orchestrator.core.webhooks import DEFAULT_EVENTS
from gpu_orchestrator.store.base import StartNow, decode_cursor, encode_cursor
from gpu_orchestrator.store.pg_engine import fresh_on_stale
from gpu_orchestrator.store.pg_sql import (COLS, GET, INSERT_QUEUED, INSERT_STARTED, QUEUED_DEPTH, SET_WEBHOOK, insert_args,
                                           lock_key)
from gpu_orchestrator.store.pg_webhooks import CHANNEL as WEBHOOK_CHANNEL


class PgIntake:
    engine: Engine  # set by PostgresJobStore

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
            # A start takes the claim's own lock in its statement: the in-flight bound stays exact.
            row = conn.execute(sa.text(INSERT_QUEUED if start is None else INSERT_STARTED), args).first()
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

    # -- cancel -----------------------------------------------------------------------------------

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
