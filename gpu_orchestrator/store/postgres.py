"""The job store: Postgres via SQLAlchemy 2.0 Core. Postgres is the single source of truth for jobs.

Every state change is one guarded UPDATE (`WHERE status IN (...)`, plus the lease owner and attempt
for a running job); zero matched rows raises TransitionError instead of passing silently.

Two connection pools: lease renewal and rescue (heartbeat, rescue_expired, release) have their own
small one, so a burst of client reads cannot starve it and let leases expire under running jobs.
Every connection has a statement_timeout and a connect_timeout: a stuck query fails, not hangs.

This module holds PostgresJobStore itself: its pools and their lifecycle, and the job path on the
event loop. Its statements, by part: intake and single-job reads, store/pg_intake.py; claims,
leases and an attempt's end, store/pg_leases.py; reports and retention, store/pg_reports.py (the
SQL they share: store/pg_sql.py). Connections and migrations: store/pg_engine.py; the leader lock:
store/pg_lock.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gpu_orchestrator.core.artifact_refs import artifact_uris
from gpu_orchestrator.core.jobs import Job, JobNotFound
from gpu_orchestrator.store.base import Cost
from gpu_orchestrator.store.pg_async import AsyncJobPath
from gpu_orchestrator.store.pg_engine import (connect_args, create_engine, fresh_on_stale, is_transient_db_error,
                                              ping_when_idle, run_migrations)
from gpu_orchestrator.store.pg_intake import PgIntake
from gpu_orchestrator.store.pg_leases import PgLeases
from gpu_orchestrator.store.pg_listen import Listener
from gpu_orchestrator.store.pg_lock import PostgresLeaderLock
from gpu_orchestrator.store.pg_reports import PgReports

__all__ = ["JobStore", "PostgresJobStore"]

log = logging.getLogger(__name__)


class PostgresJobStore(PgIntake, PgLeases, PgReports):
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


JobStore = PostgresJobStore  # the old name; goes once every caller names PostgresJobStore
