"""The orchestrator over real Postgres and Redis (root/postgres.py, as serve/router.py builds it on a
replica) served by uvicorn in this process, without Ray: the test backends, optionally behind a TCP
proxy that a test can cut or stall, and a stand-in model deployment handle behind the same
ServeBackend adapter a replica uses. What Ray adds (handles, metrics, replica states) is passed in,
nothing is patched.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import uuid
from typing import Any, Iterator

import httpx
from sqlalchemy.engine import make_url

from tests.fakes.models import (AUDIO_APP, CHAT_APP, ECHO_APP, IMAGE_APP, SEGMENTS, FakeModel,  # noqa: F401
                                 config)
from tests.helpers import free_port, served


class TcpProxy:
    """A TCP front for a Postgres or Redis server (TCP or Unix socket) that a test can cut
    (connections reset, new ones refused), stall (accepted, never answered: a slow server) or restore."""

    def __init__(self, upstream: str | tuple[str, int]):
        self.upstream = upstream
        self.port = free_port()
        self.mode = "up"
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._listen()

    def _listen(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self.mode == "down":
                client.close()
                return
            if self.mode == "stall":
                self._track(client)
                continue
            try:
                if isinstance(self.upstream, str):
                    up = socket.socket(socket.AF_UNIX)
                    up.connect(self.upstream)
                else:
                    up = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self._track(client)
            self._track(up)
            threading.Thread(target=self._pump, args=(client, up), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client), daemon=True).start()

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.append(s)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.mode == "stall":
                    continue  # swallow: the server never answers
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _drop_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            # shutdown first: a close() alone leaves a socket that another thread blocks on open.
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def cut(self) -> None:
        """Down: open connections reset, new ones refused."""
        self.mode = "down"
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            self._listener.close()
            self._listener = None
        self._drop_all()

    def stall(self) -> None:
        """Slow: connections stay open but nothing comes back."""
        self.mode = "stall"
        if self._listener is None:
            self._listen()

    def restore(self) -> None:
        was_stalled = self.mode == "stall"
        self.mode = "up"
        if was_stalled:
            self._drop_all()
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self.cut()


def redis_upstream(url: str) -> str | tuple[str, int]:
    if url.startswith("unix://"):
        return url[len("unix://"):].split("?")[0]
    u = httpx.URL(url)
    return (u.host or "127.0.0.1", u.port or 6379)


def pg_upstream(url: str) -> str | tuple[str, int]:
    u = make_url(url)
    host = u.query.get("host") or u.host
    if host and host.startswith("/"):
        return f"{host}/.s.PGSQL.{u.port or 5432}"
    return (host or "127.0.0.1", u.port or 5432)


def proxied_pg_url(url: str, proxy: TcpProxy) -> str:
    u = make_url(url)
    return u.set(host="127.0.0.1", port=proxy.port, query={}).render_as_string(hide_password=False)


class RunningRouter:
    def __init__(self, router: Any, base: str, model: FakeModel, loop: asyncio.AbstractEventLoop):
        self.router, self.base, self.model, self.loop = router, base, model, loop

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's event loop (where the router's clients live)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_dispatching(self) -> None:
        """What Serve's first autoscaling-stats call does on a replica: start the dispatcher without a submit."""
        async def start() -> None:
            self.router.start()

        self.call(start())


class NoReplicas:
    """A cluster view with no Serve replicas and no nodes (GET /v1/workers: no replica counts)."""

    def replica_states(self) -> dict[str, dict[str, int]]:
        return {}

    def nodes(self) -> list:
        return []


@contextlib.contextmanager
def running_router(database_url: str, redis_url: str, *, artifacts: str | None = None,
                   cfg: dict | None = None, cloud_providers: dict | None = None) -> Iterator[RunningRouter]:

    from gpu_orchestrator.core.config import parse_config
    from gpu_orchestrator.root.memory import MemoryMetrics
    from gpu_orchestrator.root.postgres import on_postgres
    from gpu_orchestrator.serve.backend import ServeBackend

    model = FakeModel(redis_url)  # the same Redis (or proxy) as the router, like a real replica
    model.artifacts_url = artifacts
    backend = ServeBackend(model)
    router = on_postgres(parse_config(cfg or config()), {"echo": backend, "llm": backend}, database_url=database_url,
                         redis_url=redis_url, metrics=MemoryMetrics(), cluster=NoReplicas(),
                         owner=f"router:test:{uuid.uuid4().hex[:8]}", board_name="orchestrator", artifacts_url=artifacts,
                         cloud_providers=cloud_providers)
    try:
        with served(router.asgi()) as (base, loop):
            running = RunningRouter(router, base, model, loop)
            try:
                yield running
            finally:
                with contextlib.suppress(Exception):
                    running.call(router.dispatcher.stop(), timeout=5)
                with contextlib.suppress(Exception):
                    running.call(router.retention.stop(), timeout=5)
                if router._gauge is not None:  # the queue-depth gauge loop of the replica
                    loop.call_soon_threadsafe(router._gauge.cancel)
                router.loop_watch.stop()
                if router.webhooks is not None:  # before its database goes with the test
                    with contextlib.suppress(Exception):
                        running.call(router.webhooks.stop(), timeout=5)
                for bus in (router.bus, model._bus):
                    if bus is not None:
                        with contextlib.suppress(Exception):
                            running.call(bus.close(), timeout=5)
    finally:
        router.store.close()


# Fixtures (import them into a test module to use them).
import pytest  # noqa: E402


@pytest.fixture
def db_url(serve_backend):
    name = serve_backend.fresh_database()
    yield serve_backend.url_for(name)
    serve_backend.drop(name)


@pytest.fixture
def rr(db_url, serve_backend, tmp_path):
    """A running router on the test backends (no proxy)."""
    with running_router(db_url, serve_backend.redis_url, artifacts=str(tmp_path / "art"),
                        cfg=config(max_body_bytes=4096, max_upload_bytes=64 * 1024 * 1024)) as r:
        yield r


@pytest.fixture
def http(rr):
    with httpx.Client(base_url=rr.base, timeout=30) as c:
        yield c
