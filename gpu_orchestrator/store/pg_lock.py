"""The leader lock: a Postgres session-level advisory lock on a connection of its own."""

from __future__ import annotations

import logging
import threading

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("gpu_orchestrator.store.postgres")


class PostgresLeaderLock:
    """A session-level advisory lock held on a dedicated connection. If the holder dies (or its
    connection does), Postgres releases the lock and another replica can take it.

    Thread-safe: hold() and release() run in worker threads (asyncio.to_thread), and a hold() still
    running when its task was cancelled must not race release(). release() is final: hold() answers
    False afterwards, so a late hold() cannot take the lock again after its owner stopped."""

    def __init__(self, engine: Engine, key: int):
        self.engine = engine
        self.key = key
        self._conn: Connection | None = None
        self._mutex = threading.Lock()
        self.closed = False

    def hold(self) -> bool:
        """Take the lock, or confirm it is still held (the connection still answers)."""
        with self._mutex:
            if self.closed:
                return False
            try:
                if self._conn is None:
                    self._conn = self.engine.connect()
                    got = self._conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
                    self._conn.commit()
                    if not got:
                        self._conn.close()
                        self._conn = None
                    return bool(got)
                self._conn.execute(sa.text("SELECT 1"))
                self._conn.commit()
                return True
            except Exception as e:
                log.warning("leader lock %#x lost: %s", self.key, e)
                self._drop()
                return False

    def release(self) -> None:
        """Give the lock up for good (hold() is False from now on)."""
        with self._mutex:
            self.closed = True
            if self._conn is None:
                return
            try:
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                self._conn.commit()
                self._conn.close()
            except Exception:
                self._drop()  # a dead connection holds nothing: Postgres dropped the lock with it
            self._conn = None

    def _drop(self) -> None:
        # invalidate, not close: a connection in an unknown state must not go back to the pool
        if self._conn is not None:
            try:
                self._conn.invalidate()
            except Exception:
                pass
        self._conn = None
