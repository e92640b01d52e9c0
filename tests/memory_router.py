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
from typing import Any, Iterator

import httpx
import pytest

from gpu_orchestrator.root.memory import in_memory
from gpu_orchestrator.service.backends import InProcessBackend
from gpu_orchestrator.store.artifacts import ArtifactStore
from tests.fakes.models import AsModelObject, FakeModel, config
from tests.helpers import served


class RunningOrchestrator:
    def __init__(self, router: Any, base: str, model: FakeModel, loop: asyncio.AbstractEventLoop):
        self.router, self.base, self.model, self.loop = router, base, model, loop

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's event loop (where the orchestrator's tasks live)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextlib.contextmanager
def running_orchestrator(cfg: dict | None = None, *, artifacts: str | None = None,
                         models: tuple[str, ...] = ("echo", "llm")) -> Iterator[RunningOrchestrator]:
    """The in-memory orchestrator on a free loopback port; `models`: the deployments it has a
    backend for (one FakeModel answers for all of them, on the orchestrator's own bus)."""
    model = FakeModel()
    model.artifacts_url = artifacts
    backend = InProcessBackend(AsModelObject(model))
    orch = in_memory(cfg or config(), {m: backend for m in models},
                     artifacts=ArtifactStore(artifacts) if artifacts else None)
    model._bus = orch.bus  # progress and tokens go where the orchestrator's SSE reads
    with served(orch.asgi()) as (base, loop):
        running = RunningOrchestrator(orch, base, model, loop)
        try:
            yield running
        finally:
            with contextlib.suppress(Exception):
                running.call(orch.aclose(), timeout=10)


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
