"""The orchestrator's in-memory build (root/memory.py: memory store, bus and keys) served by uvicorn
in this process, over FakeModel: the HTTP behaviour tests' stack. No Postgres, Redis or Ray, so a
test about validation, limits, files or long polls runs in milliseconds; what is about the database,
Redis or the proxy stays with router_harness.py (Postgres + Redis) and tests/serve (Ray).

The fixtures `rr` and `http` have router_harness.py's shape: `rr.router` is the orchestrator (its
`api`, `artifacts`, `backends`), `rr.base` the URL, `rr.call(coro)` runs on the server's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Any, Iterator

import httpx
import pytest

from gpu_orchestrator.root.memory import in_memory
from gpu_orchestrator.service.backends import InProcessBackend
from gpu_orchestrator.store.artifacts import ArtifactStore
from tests.fakes.models import AsModelObject, FakeModel, config
from tests.helpers import TERMINAL, wait_status


class RunningOrchestrator:
    def __init__(self, router: Any, base: str, model: FakeModel, loop: asyncio.AbstractEventLoop):
        self.router, self.base, self.model, self.loop = router, base, model, loop

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's event loop (where the orchestrator's tasks live)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_orchestrator(cfg: dict | None = None, *, artifacts: str | None = None,
                         models: tuple[str, ...] = ("echo", "llm")) -> Iterator[RunningOrchestrator]:
    """The in-memory orchestrator on a free loopback port; `models`: the deployments it has a
    backend for (one FakeModel answers for all of them, on the orchestrator's own bus)."""
    import uvicorn

    model = FakeModel()
    model.artifacts_url = artifacts
    backend = InProcessBackend(AsModelObject(model))
    orch = in_memory(cfg or config(), {m: backend for m in models},
                     artifacts=ArtifactStore(artifacts) if artifacts else None)
    model._bus = orch.bus  # progress and tokens go where the orchestrator's SSE reads
    server = uvicorn.Server(uvicorn.Config(orch.asgi(), host="127.0.0.1", port=_free_port(), log_level="warning",
                                           lifespan="off"))
    loop = asyncio.new_event_loop()

    def serve_forever() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.serve())

    t = threading.Thread(target=serve_forever, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not t.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    running = RunningOrchestrator(orch, f"http://127.0.0.1:{server.config.port}", model, loop)
    try:
        yield running
    finally:
        with contextlib.suppress(Exception):
            running.call(orch.aclose(), timeout=10)
        server.should_exit = True
        t.join(timeout=10)


def wait_terminal(http: httpx.Client, job_id: str, timeout: float = 30) -> dict:
    """The job once terminal (AssertionError after `timeout`)."""
    return wait_status(http, job_id, TERMINAL, timeout)


@pytest.fixture
def rr(tmp_path):
    """The in-memory orchestrator with a local artifact store and small body limits."""
    with running_orchestrator(config(max_body_bytes=4096, max_upload_bytes=64 * 1024 * 1024),
                              artifacts=str(tmp_path / "art")) as r:
        yield r


@pytest.fixture
def http(rr):
    with httpx.Client(base_url=rr.base, timeout=30) as c:
        yield c
