"""A Postgres LISTEN on one channel, in a daemon thread with a connection of its own: each
notification's payload goes to `on_message`; `on_state(True)` once listening, `on_state(False)`
whenever the connection is lost (then it reconnects, with a pause). What listens must treat the
time it was not listening as unknown: notifications sent meanwhile are gone."""

from __future__ import annotations

import logging
import select
import threading
from typing import Callable

import psycopg2
import psycopg2.extensions
from sqlalchemy.engine import make_url

log = logging.getLogger("gpu_orchestrator.store.listen")


def _dsn(url: str) -> str:
    u = make_url(url)
    parts = {"host": u.host, "port": u.port, "dbname": u.database, "user": u.username, "password": u.password,
             **{k: v for k, v in u.query.items() if isinstance(v, str)}}
    return psycopg2.extensions.make_dsn(**{k: v for k, v in parts.items() if v is not None}, connect_timeout=10)


class Listener:
    def __init__(self, url: str, channel: str, on_message: Callable[[str], None], on_state: Callable[[bool], None],
                 *, retry_s: float = 1.0, max_retry_s: float = 30.0, poll_s: float = 5.0):
        self.dsn, self.channel = _dsn(url), channel
        self.on_message, self.on_state = on_message, on_state
        self.retry_s, self.max_retry_s, self.poll_s = retry_s, max_retry_s, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"listen:{channel}", daemon=True)

    def start(self) -> "Listener":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        delay, failing = self.retry_s, False
        while not self._stop.is_set():
            conn = None
            try:
                conn = psycopg2.connect(self.dsn)
                conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
                with conn.cursor() as cur:
                    cur.execute(f'LISTEN "{self.channel}"')
                self.on_state(True)
                delay, failing = self.retry_s, False
                while not self._stop.is_set():
                    if select.select([conn], [], [], self.poll_s) == ([], [], []):
                        with conn.cursor() as cur:  # a quiet channel: is the server still there?
                            cur.execute("SELECT 1")
                    conn.poll()
                    while conn.notifies:
                        self.on_message(conn.notifies.pop(0).payload)
            except Exception as e:
                if not failing and not self._stop.is_set():  # once per outage, not per retry
                    log.info("not listening on %s (%s); retrying", self.channel, type(e).__name__)
                failing = True
            finally:
                self.on_state(False)
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
            self._stop.wait(delay)
            delay = min(delay * 2, self.max_retry_s)
