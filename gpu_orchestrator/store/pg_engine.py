"""Postgres connections for the job store: the engine (psycopg2 pinned, every query and connect
bounded), idle-only pings, which errors are transient, and migrations (one migrator at a time)."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gpu_orchestrator.store.base import StoreUnavailable

MIGRATION_LOCK = 0x6770756F72  # "gpuor": serialises migrations across router replicas


def is_transient_db_error(exc: BaseException) -> bool:
    """A lost connection, a restarting server, a statement timeout, a full pool: the same write may
    land if tried again (and the memory store's simulated outage, StoreUnavailable). A DataError
    or a bug would fail the same way every time."""
    if isinstance(exc, (StoreUnavailable, sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        return bool(exc.connection_invalidated)
    from gpu_orchestrator.store.pg_async import CONNECTION_ERRORS  # the job path's driver

    return isinstance(exc, CONNECTION_ERRORS)


def connect_args(*, statement_timeout_s: float | None = 30.0, connect_timeout_s: float | None = 10.0) -> dict[str, Any]:
    """psycopg2 connect arguments bounding every query and every connection attempt."""
    args: dict[str, Any] = {}
    if statement_timeout_s:
        args["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
    if connect_timeout_s:
        args["connect_timeout"] = max(1, int(round(connect_timeout_s)))
    return args


def sqlalchemy_url(url: str) -> str:
    """Pin the psycopg2 driver: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def create_engine(url: str, **kw: Any) -> Engine:
    return sa.create_engine(sqlalchemy_url(url), json_serializer=lambda o: json.dumps(o, default=str), **kw)


PING_IDLE_S = 1.0


def fresh_on_stale(read: Any) -> Any:
    """A read that found its pooled connection dead (used moments ago, so not pinged; the server
    restarted meanwhile) runs once more: the disconnect invalidated the pool, so the second try
    gets a new connection and fails only if Postgres is really away. Reads only: a write whose
    connection dropped may have committed."""

    @functools.wraps(read)
    def run(*args: Any, **kw: Any) -> Any:
        try:
            return read(*args, **kw)
        except sa.exc.DBAPIError as e:
            if not e.connection_invalidated:
                raise
        return read(*args, **kw)

    return run


def ping_when_idle(engine: Engine, idle_s: float = PING_IDLE_S) -> Engine:
    """Check a pooled connection before use only when it sat idle longer than `idle_s` (SQLAlchemy's
    pool_pre_ping checks on every checkout: a round trip per statement group, about a tenth of the
    job path's database time). A connection in steady use was answering a moment ago; one that dies
    under it fails that one call, and the disconnect invalidates the whole pool at once."""

    @sa.event.listens_for(engine, "checkin")
    def _checkin(dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since <= idle_s:
            return  # new, or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as e:  # the pool replaces the connection and tries again
            raise sa.exc.DisconnectionError(str(e)) from e

    return engine


def run_migrations(engine: Engine, *, target: str = "head", poll_s: float = 0.2) -> None:
    """Bring the schema to `target` (head). Safe to call from several processes at once: one migrates, the
    others wait for it. Each migration runs in its own transaction; index builds on the live jobs
    table run outside any (CREATE INDEX CONCURRENTLY, store/migrations/online.py), so the lock that
    serialises migrators is a session-level advisory lock, and a waiter polls for it rather than
    blocking in a statement (a build waits out every older open snapshot: a waiter stuck inside
    a statement would be one, and the two would wait on each other)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.connect() as conn:
        default_isolation = conn.get_isolation_level()
        conn.execution_options(isolation_level="AUTOCOMMIT")
        while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": MIGRATION_LOCK}).scalar():
            conn.commit()
            time.sleep(poll_s)
        try:
            # Waiting out a long build is not a stuck query (the session's own setting, reset after).
            conn.execute(sa.text("SET statement_timeout = 0"))
            conn.commit()
            conn.execution_options(isolation_level=default_isolation)  # alembic runs its transactions
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, target)
        finally:
            try:
                conn.rollback()
                conn.execute(sa.text("RESET statement_timeout"))
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                conn.commit()
            except sa.exc.DBAPIError:
                conn.invalidate()  # a broken connection: closing it drops the lock
