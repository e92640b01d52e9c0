"""Shared fixtures: Postgres and Redis backends (the embedded ones, and the machine's own when
reachable), a fresh database per test cloned from a migrated template, and job stores: `store`
(Postgres), `memory_store` (no database) and `any_store` (memory and every Postgres in turn)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from gpu_orchestrator.ops import embedded
from gpu_orchestrator.store.memory import ManualClock, MemoryJobStore
from gpu_orchestrator.store.pg_engine import create_engine, run_migrations
from gpu_orchestrator.store.postgres import PostgresJobStore

# The Ray session (one Ray instance and the deployed applications), shared by tests/serve and
# tests/browser: fixtures in a plugin rather than a directory's conftest, so both see one instance.
pytest_plugins = ["tests.ray_session", "tests.timing"]

EXTERNAL_PG = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
EXTERNAL_REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(url: str, default_port: int) -> bool:
    u = make_url(url) if "://" in url and not url.startswith("redis") else None
    host, port = ("127.0.0.1", default_port)
    if u is not None:
        host, port = u.host or host, u.port or default_port
    else:
        from urllib.parse import urlparse

        p = urlparse(url)
        host, port = p.hostname or host, p.port or default_port
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _backends() -> list[str]:
    # Always the embedded pair (what a fresh machine has); the machine's services too where they run.
    out = ["embedded"]
    if _reachable(EXTERNAL_PG, 5432) and _reachable(EXTERNAL_REDIS, 6379):
        out.insert(0, "external")
    return out


class Backend:
    def __init__(self, name: str, admin_url: str, redis_url: str):
        self.name = name
        self.admin_url = admin_url
        self.redis_url = redis_url
        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        self.template = f"gpu_orch_tpl_{uuid.uuid4().hex[:8]}"
        with self.admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{self.template}"'))
        eng = create_engine(self.url_for(self.template), poolclass=sa.pool.NullPool)
        run_migrations(eng)
        eng.dispose()

    def url_for(self, db: str) -> str:
        return make_url(self.admin_url).set(database=db).render_as_string(hide_password=False)

    def fresh_database(self) -> str:
        name = f"gpu_orch_t_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
        return name

    def drop(self, name: str) -> None:
        with self.admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        self.drop(self.template)
        self.admin.dispose()


@pytest.fixture(scope="session")
def embedded_services():
    root = Path(tempfile.mkdtemp(prefix="gpu-orch-test-"))
    os.chmod(root, 0o755)  # the embedded Postgres runs as its own system user when we are root
    pg = embedded.start_postgres(root / "pg")
    rd = embedded.start_redis(root / "redis")
    yield pg, rd
    embedded.stop_redis(root / "redis")
    embedded.stop_postgres(root / "pg")
    shutil.rmtree(root, ignore_errors=True)


def _make_backend(name: str, request) -> Backend:
    if name == "external":
        return Backend("external", EXTERNAL_PG, EXTERNAL_REDIS)
    pg, rd = request.getfixturevalue("embedded_services")
    return Backend("embedded", pg, rd)


# One fixture per backend (so a test can pick one by name, as any_store does, without the
# parametrised `backend`); the embedded one is torn down before the services it runs on.
@pytest.fixture(scope="session")
def external_backend():
    b = Backend("external", EXTERNAL_PG, EXTERNAL_REDIS)
    yield b
    b.close()


@pytest.fixture(scope="session")
def embedded_backend(embedded_services):
    pg, rd = embedded_services
    b = Backend("embedded", pg, rd)
    yield b
    b.close()


@pytest.fixture(scope="session")
def backend(embedded_backend):
    """The integration tests' backend: the embedded Postgres and Redis, which every machine has
    (what `gpu-orch up` starts when DATABASE_URL/REDIS_URL are unset). The store contract tests
    (`any_store`) also run on the machine's Postgres where it runs, and the Ray tests use it
    (`serve_backend`), so both servers are exercised; running every integration test on both
    only ran the same SQL twice."""
    return embedded_backend


@pytest.fixture(scope="session")
def serve_backend(request):
    """One backend for the Ray tests (the machine's services where they run, else embedded)."""
    b = _make_backend(_backends()[0], request)
    yield b
    b.close()


@pytest.fixture
def database_url(backend):
    name = backend.fresh_database()
    yield backend.url_for(name)
    backend.drop(name)


@pytest.fixture
def store(database_url):
    s = PostgresJobStore.connect(database_url, migrate=False)
    yield s
    s.close()


@pytest.fixture
def memory_store():
    """A MemoryJobStore on a ManualClock: `memory_store.clock.advance(s)` moves its time."""
    return MemoryJobStore(clock=ManualClock())


@pytest.fixture(params=["memory"] + [f"postgres-{b}" for b in _backends()])
def any_store(request):
    """The same test against each store: the memory one (no database) and Postgres on every
    backend available."""
    if request.param == "memory":
        yield MemoryJobStore(clock=ManualClock())
        return
    b = request.getfixturevalue(f"{request.param.removeprefix('postgres-')}_backend")
    db = b.fresh_database()
    s = PostgresJobStore.connect(b.url_for(db), migrate=False)
    yield s
    s.close()
    b.drop(db)


@pytest.fixture
def redis_url(backend):
    return backend.redis_url
