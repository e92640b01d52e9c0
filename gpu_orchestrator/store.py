"""The job store: Postgres via SQLAlchemy 2.0 Core. Postgres is the single source of truth for jobs.

Every state change is one guarded UPDATE (`WHERE status IN (...)`, plus the lease owner and attempt
for a running job); zero matched rows raises TransitionError instead of passing silently.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .jobs import Job, JobNotFound, JobStatus, QueueFull, TransitionError

_COLS = (
    "id, app_id, status, priority, params, result, error, attempts, max_attempts, timeout_s, backend, "
    "idempotency_key, lease_owner, lease_expires_at, created_at, started_at, finished_at"
)
_MIGRATION_LOCK = 0x6770756F72  # "gpuor": serialises migrations across router replicas


def _lock_key(name: str) -> sa.TextClause:
    return sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))").bindparams(k=name)


def sqlalchemy_url(url: str) -> str:
    """Pin the psycopg2 driver: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def create_engine(url: str, **kw: Any) -> Engine:
    return sa.create_engine(sqlalchemy_url(url), json_serializer=lambda o: json.dumps(o, default=str), **kw)


def run_migrations(engine: Engine) -> None:
    """Bring the schema to head. Safe to call from several processes at once."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@dataclass(frozen=True)
class AppQueueStats:
    app_id: str
    queued: int
    running: int
    oldest_queued_age_s: float | None
    max_queued_priority: int | None


@dataclass(frozen=True)
class Rescued:
    job_id: uuid.UUID
    app_id: str
    status: JobStatus
    error: str


class JobStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def connect(cls, url: str, *, migrate: bool = True, pool_size: int = 5) -> "JobStore":
        engine = create_engine(
            url,
            pool_pre_ping=True,  # survive a Postgres restart without surfacing dead connections
            pool_size=pool_size,
            max_overflow=10,
        )
        if migrate:
            run_migrations(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

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
    ) -> tuple[Job, bool]:
        """Insert a queued job. Returns (job, created); created is False for a repeated Idempotency-Key."""
        with self.engine.begin() as conn:
            if idempotency_key is not None:
                existing = self._by_key(conn, idempotency_key)
                if existing is not None:
                    return existing, False
            if max_queued is not None:
                conn.execute(_lock_key(f"submit:{app_id}"))
                depth = conn.execute(
                    sa.text("SELECT count(*) FROM jobs WHERE app_id = :a AND status = 'queued'"), {"a": app_id}
                ).scalar_one()
                if depth >= max_queued:
                    raise QueueFull(app_id, depth, retry_after_s=max(1, min(60, depth // 100)))
            row = conn.execute(
                sa.text(
                    f"INSERT INTO jobs (id, app_id, status, priority, params, max_attempts, timeout_s, idempotency_key) "
                    f"VALUES (:id, :app_id, 'queued', :priority, CAST(:params AS jsonb), :max_attempts, :timeout_s, :key) "
                    f"ON CONFLICT (idempotency_key) DO NOTHING RETURNING {_COLS}"
                ),
                {
                    "id": job_id or uuid.uuid4(),
                    "app_id": app_id,
                    "priority": priority,
                    "params": json.dumps(params),
                    "max_attempts": max_attempts,
                    "timeout_s": timeout_s,
                    "key": idempotency_key,
                },
            ).first()
            if row is None:  # lost a race with the same key
                existing = self._by_key(conn, idempotency_key)  # type: ignore[arg-type]
                assert existing is not None
                return existing, False
            return Job.from_row(row), True

    def _by_key(self, conn: Connection, key: str) -> Job | None:
        row = conn.execute(sa.text(f"SELECT {_COLS} FROM jobs WHERE idempotency_key = :k"), {"k": key}).first()
        return Job.from_row(row) if row else None

    # -- reads ------------------------------------------------------------------------------------

    def get(self, job_id: uuid.UUID) -> Job:
        with self.engine.connect() as conn:
            row = conn.execute(sa.text(f"SELECT {_COLS} FROM jobs WHERE id = :id"), {"id": job_id}).first()
        if row is None:
            raise JobNotFound(job_id)
        return Job.from_row(row)

    def list(
        self,
        *,
        app_id: str | None = None,
        status: JobStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """Newest first, keyset-paginated; returns (jobs, next_cursor)."""
        where, args = [], {"limit": limit + 1}
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
        sql = f"SELECT {_COLS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT :limit"
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(sql), args).all()
        jobs = [Job.from_row(r) for r in rows[:limit]]
        nxt = encode_cursor(jobs[-1]) if len(rows) > limit else None
        return jobs, nxt

    def apps_with_queued(self) -> set[str]:
        """Apps with at least one queued job (a skip scan over the partial queued index)."""
        with self.engine.connect() as conn:
            return set(conn.execute(sa.text("SELECT DISTINCT app_id FROM jobs WHERE status = 'queued'")).scalars())

    def fail_queued(self, app_id: str, error: str) -> list[uuid.UUID]:
        """queued -> failed for every queued job of an app (they can never run); returns their ids."""
        with self.engine.begin() as conn:
            return list(conn.execute(
                sa.text("UPDATE jobs SET status = 'failed', finished_at = now(), error = :error "
                        "WHERE app_id = :app AND status = 'queued' RETURNING id"),
                {"app": app_id, "error": error},
            ).scalars())

    def queue_stats(self) -> dict[str, AppQueueStats]:
        sql = sa.text(
            "SELECT app_id, count(*) FILTER (WHERE status = 'queued') AS queued, "
            "count(*) FILTER (WHERE status = 'running') AS running, "
            "extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'queued')) AS oldest, "
            "max(priority) FILTER (WHERE status = 'queued') AS maxprio "
            "FROM jobs WHERE status IN ('queued', 'running') GROUP BY app_id"
        )
        with self.engine.connect() as conn:
            return {
                r.app_id: AppQueueStats(r.app_id, r.queued, r.running, float(r.oldest) if r.oldest is not None else None, r.maxprio)
                for r in conn.execute(sql)
            }

    def service_times(self, *, window_s: float = 3600.0) -> dict[str, float]:
        """Mean run time (started -> finished) of each app's recently succeeded jobs, in seconds."""
        sql = sa.text(
            "SELECT app_id, avg(extract(epoch FROM finished_at - started_at)) AS s FROM jobs "
            "WHERE status = 'succeeded' AND finished_at > now() - make_interval(secs => :w) GROUP BY app_id"
        )
        with self.engine.connect() as conn:
            return {r.app_id: float(r.s) for r in conn.execute(sql, {"w": window_s}) if r.s is not None}

    # -- dispatch ---------------------------------------------------------------------------------

    def claim(self, *, app_id: str, owner: str, limit: int, lease_s: float, max_in_flight: int) -> list[Job]:
        """Move up to `limit` queued jobs of one app to running, highest priority first.

        The per-app advisory lock makes the in-flight bound exact across router replicas;
        SKIP LOCKED keeps claimers from blocking on rows another transaction holds (e.g. cancel).
        """
        with self.engine.begin() as conn:
            conn.execute(_lock_key(f"claim:{app_id}"))
            running = conn.execute(
                sa.text("SELECT count(*) FROM jobs WHERE app_id = :a AND status = 'running'"), {"a": app_id}
            ).scalar_one()
            n = min(limit, max_in_flight - running)
            if n <= 0:
                return []
            rows = conn.execute(
                sa.text(
                    f"UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = :owner, "
                    f"lease_expires_at = now() + make_interval(secs => :lease), started_at = coalesce(started_at, now()), "
                    f"error = NULL "
                    f"WHERE id IN (SELECT id FROM jobs WHERE app_id = :a AND status = 'queued' "
                    f"ORDER BY priority DESC, created_at, id LIMIT :n FOR UPDATE SKIP LOCKED) "
                    f"RETURNING {_COLS}"
                ),
                {"a": app_id, "owner": owner, "lease": lease_s, "n": n},
            ).all()
        jobs = [Job.from_row(r) for r in rows]
        jobs.sort(key=lambda j: (-j.priority, j.created_at, j.id))
        return jobs

    def heartbeat(self, *, owner: str, job_ids: Iterable[uuid.UUID], lease_s: float) -> set[uuid.UUID]:
        """Extend leases of jobs this owner still holds; returns the ids still held."""
        ids = list(job_ids)
        if not ids:
            return set()
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.text(
                    "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease) "
                    "WHERE id = ANY(:ids) AND status = 'running' AND lease_owner = :owner RETURNING id"
                ),
                {"ids": ids, "owner": owner, "lease": lease_s},
            ).all()
        return {r.id for r in rows}

    def complete(self, *, job_id: uuid.UUID, owner: str, attempt: int, result: Any, backend: str) -> Job:
        """running -> succeeded, only for the lease holder of this very attempt."""
        return self._leased_update(
            "status = 'succeeded', result = CAST(:result AS jsonb), backend = :backend, finished_at = now()",
            {"result": json.dumps(result, default=str), "backend": backend},
            job_id=job_id, owner=owner, attempt=attempt, wanted="complete",
        )

    def fail_attempt(
        self, *, job_id: uuid.UUID, owner: str, attempt: int, error: str, retryable: bool = True, backend: str | None = None
    ) -> Job:
        """running -> queued (attempts left and retryable) or failed; guarded like complete()."""
        return self._leased_update(
            "status = CASE WHEN :retry AND attempts < max_attempts THEN 'queued' ELSE 'failed' END, "
            "finished_at = CASE WHEN :retry AND attempts < max_attempts THEN NULL ELSE now() END, "
            "error = :error, backend = coalesce(:backend, backend)",
            {"error": error, "retry": retryable, "backend": backend},
            job_id=job_id, owner=owner, attempt=attempt, wanted="record a failed attempt",
        )

    def _leased_update(self, set_sql: str, args: dict[str, Any], *, job_id: uuid.UUID, owner: str, attempt: int,
                       wanted: str) -> Job:
        """The guard for ending an attempt: the job is running, under this owner's lease, on this
        very attempt. A late result from an expired lease or a cancelled job matches zero rows."""
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.text(
                    f"UPDATE jobs SET {set_sql}, lease_owner = NULL, lease_expires_at = NULL "
                    f"WHERE id = :id AND status = 'running' AND lease_owner = :owner AND attempts = :attempt "
                    f"RETURNING {_COLS}"
                ),
                {"id": job_id, "owner": owner, "attempt": attempt, **args},
            ).first()
            if row is None:
                raise TransitionError(job_id, self._status(conn, job_id), wanted)
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
                    f"WHERE id = :id AND status IN ('queued', 'running') RETURNING {_COLS}"
                ),
                {"id": job_id},
            ).first()
            if row is None:
                raise TransitionError(job_id, prev, "cancel")
        return Job.from_row(row), JobStatus(prev)

    def rescue_expired(self) -> list[Rescued]:
        """Running jobs whose lease expired (their router died): re-queue, or fail once attempts are spent."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.text(
                    "UPDATE jobs SET "
                    "status = CASE WHEN attempts < max_attempts THEN 'queued' ELSE 'failed' END, "
                    "finished_at = CASE WHEN attempts < max_attempts THEN NULL ELSE now() END, "
                    "error = 'lease expired: the router running attempt ' || attempts || ' stopped responding', "
                    "lease_owner = NULL, lease_expires_at = NULL "
                    "WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at < now() "
                    "FOR UPDATE SKIP LOCKED) RETURNING id, app_id, status, error"
                )
            ).all()
        return [Rescued(r.id, r.app_id, JobStatus(r.status), r.error) for r in rows]

    def _status(self, conn: Connection, job_id: uuid.UUID) -> str | None:
        return conn.execute(sa.text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}).scalar()


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, cid = raw.split("|")
        return dt.datetime.fromisoformat(created), uuid.UUID(cid)
    except Exception:
        raise ValueError("cursor is not a cursor returned by this API") from None
