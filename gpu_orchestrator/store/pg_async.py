"""The job path's hottest statements on asyncpg: a submit without an Idempotency-Key or a quota
(insert, or insert-and-start), a job read, and a completion. The same SQL as the rest of the store
(store/pg_sql.py), run on the event loop: no thread hop and no SQLAlchemy per statement (measured:
1.2 ms less CPU per job in the router replica; docs/performance.md). Everything else stays on the
synchronous store.

Prepared statements: asyncpg prepares and caches each statement per connection. Behind PgBouncer in
transaction mode a connection's prepared statements are not there on the next transaction: set
`router.prepared_statements: false` there (or use PgBouncer >= 1.21 with max_prepared_statements).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any, AsyncIterator

import asyncpg

from gpu_orchestrator.core.jobs import Job, QueueFull, TransitionError
from gpu_orchestrator.store.base import Cost, ResultNotStorable, StartNow, StoreUnavailable
from gpu_orchestrator.store.pg_sql import (COMPLETE_SET, GET, GRANT_RESULTS, INSERT_QUEUED, INSERT_STARTED, QUEUED_DEPTH,
                                           STATUS, cost_args, insert_args, leased_update, numbered)


# Connection trouble (class 08), a server shutting down or a statement timeout (57), a server not
# taking connections, a dropped socket, an acquire or connect that timed out: the same call may
# work when tried again.
CONNECTION_ERRORS = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.exceptions.OperatorInterventionError,
                     asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.TooManyConnectionsError, OSError,
                     TimeoutError)


def _identity(v: Any) -> Any:
    return v


async def _init(conn: Any) -> None:
    # jsonb parameters go in as JSON text (as on the synchronous store); jsonb columns come out decoded.
    await conn.set_type_codec("jsonb", encoder=_identity, decoder=json.loads, schema="pg_catalog")


class AsyncJobPath:
    def __init__(self, url: str, *, statement_timeout_s: float | None = 30.0, connect_timeout_s: float = 10.0,
                 prepared: bool = True, pool_size: int = 8):
        self.url = url
        self.kw: dict[str, Any] = {
            "min_size": 1, "max_size": pool_size, "timeout": connect_timeout_s, "init": _init,
            "server_settings": {"statement_timeout": str(int((statement_timeout_s or 0) * 1000))},
        }
        if not prepared:  # PgBouncer in transaction mode
            self.kw["statement_cache_size"] = 0
        self._pool: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Lock | None = None

    async def _acquire(self) -> Any:
        """The pool of the running event loop (a pool belongs to one loop: tests run several)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.close()
            self._loop, self._opening = loop, asyncio.Lock()
        assert self._opening is not None
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(self.url, **self.kw)
        return self._pool

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        """A pooled connection. A connection found dead (Postgres restarted) means every pooled one
        is: the pool replaces them all on their next use, so the dead ones fail one call, not one
        call each (SQLAlchemy's pool does the same on a disconnect)."""
        pool = None
        try:
            pool = await self._acquire()
            async with pool.acquire() as conn:
                yield conn
        except CONNECTION_ERRORS as e:
            if pool is not None:
                await pool.expire_connections()
            # The store's own word for it (a 503 with Retry-After; a write the dispatcher retries).
            raise StoreUnavailable(f"the database is unavailable ({type(e).__name__})") from e

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._loop is not None and not self._loop.is_closed():
            pool.terminate()  # a closed loop took the pool's connections with it

    async def submit(self, *, app_id: str, params: dict[str, Any], priority: int, max_attempts: int, timeout_s: float,
                     max_queued: int | None, route: str | None, route_reason: str | None, owner: str | None,
                     start: StartNow | None, job_id: uuid.UUID | None = None) -> Job:
        """See PostgresJobStore.submit (here without a key or a quota)."""
        args = insert_args(job_id=job_id, app_id=app_id, params=params, priority=priority, max_attempts=max_attempts,
                           timeout_s=timeout_s, key=None, fingerprint=None, route=route, reason=route_reason, owner=owner,
                           start=start)
        async with self._conn() as conn:
            if max_queued is not None:  # a soft limit, as on the synchronous store
                depth = await _fetchval(conn, QUEUED_DEPTH, {"app_id": app_id})
                if depth >= max_queued:
                    raise QueueFull.at(app_id, depth)
            # One statement in its own transaction either way (the start takes its lock inside it).
            row = await _fetchrow(conn, INSERT_QUEUED if start is None else INSERT_STARTED, args)
        return Job.from_row(dict(row))

    async def get(self, job_id: uuid.UUID) -> dict[str, Any] | None:
        async with self._conn() as conn:
            row = await _fetchrow(conn, GET, {"id": job_id})
        return dict(row) if row is not None else None

    async def complete(self, *, job_id: uuid.UUID, owner: str, attempt: int, result: Any, backend: str,
                       cost: Cost | None, grant: list[str]) -> Job:
        """See PostgresJobStore.complete."""
        args = {"id": job_id, "owner": owner, "attempt": attempt, "result": json.dumps(result, default=str),
                "backend": backend, **cost_args(cost)}
        async with self._conn() as conn:
            try:
                # Without artifacts to grant, the UPDATE alone: its own transaction, one round trip
                # (no BEGIN and COMMIT of their own).
                async with conn.transaction() if grant else contextlib.nullcontext():
                    row = await _fetchrow(conn, leased_update(COMPLETE_SET), args)
                    if row is None:
                        raise TransitionError(job_id, await _fetchval(conn, STATUS, {"id": job_id}), "complete")
                    if grant and row["owner"] is not None:
                        await _fetchval(conn, GRANT_RESULTS, {"o": row["owner"], "j": job_id, "uris": grant})
            except asyncpg.exceptions.DataError as e:  # e.g. a NUL in a string: storing it again fails the same way
                why = (str(e).strip().splitlines() or [""])[0]
                raise ResultNotStorable(f"{type(e).__name__.removesuffix('Error')}: {why}") from e  # psycopg2's names
        return Job.from_row(dict(row))


async def _fetchrow(conn: Any, sql: str, args: dict[str, Any]) -> Any:
    text, names = numbered(sql)
    return await conn.fetchrow(text, *(args[n] for n in names))


async def _fetchval(conn: Any, sql: str, args: dict[str, Any]) -> Any:
    text, names = numbered(sql)
    return await conn.fetchval(text, *(args[n] for n in names))
