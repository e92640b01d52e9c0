"""The job path behind a real PgBouncer in transaction mode (Debian's pgbouncer): with
`router.prepared_statements: false` it works; with prepared statements it fails as PgBouncer users
see it (a statement prepared on one server connection is missing on the next)."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from gpu_orchestrator.core.jobs import JobStatus
from gpu_orchestrator.store.base import StartNow
from gpu_orchestrator.store.pg_async import AsyncJobPath
from tests.helpers import free_port, wait_for

from .router_harness import db_url  # noqa: F401 (fixture)


@pytest.fixture
def bouncer(db_url):  # noqa: F811
    # Not pytest's tmp_path: as root PgBouncer runs as postgres, which may not enter root's 0700 tree.
    tmp_path = Path(tempfile.mkdtemp(prefix="gpu-orch-pgbouncer-"))
    os.chmod(tmp_path, 0o755)
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(exe):
        pytest.fail("pgbouncer is not installed: apt-get install pgbouncer (.ci/run does)")
    u = make_url(db_url)
    host = u.query.get("host") or u.host or "127.0.0.1"
    port = free_port()
    (tmp_path / "users.txt").write_text('"postgres" ""\n')
    (tmp_path / "pgbouncer.ini").write_text(
        f"[databases]\n* = host={host} port={u.port or 5432} user={u.username or 'postgres'}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\n"
        f"auth_file = {tmp_path / 'users.txt'}\npool_mode = transaction\ndefault_pool_size = 2\n"
        f"max_client_conn = 100\nlogfile = {tmp_path / 'pgbouncer.log'}\npidfile = {tmp_path / 'pgbouncer.pid'}\n"
        # asyncpg sends its settings at connect; behind PgBouncer they belong on the role or database
        "ignore_startup_parameters = statement_timeout\n")
    cmd = [exe, str(tmp_path / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(tmp_path, user.pw_uid, user.pw_gid)
        for f in tmp_path.iterdir():
            os.chown(f, user.pw_uid, user.pw_gid)
        cmd[1:1] = ["-u", "postgres"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _listening(port) or proc.poll() is not None, "pgbouncer listening", 10)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        yield f"postgresql://postgres@127.0.0.1:{port}/{u.database}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp_path, ignore_errors=True)


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def _job_path(url: str, prepared: bool, n: int = 24) -> list[JobStatus]:
    path = AsyncJobPath(url, prepared=prepared, pool_size=6, statement_timeout_s=None)
    start = StartNow(owner="r1", lease_s=30, max_in_flight=1000)

    async def one(i: int) -> JobStatus:
        job = await path.submit(app_id="a", params={"i": i}, priority=0, max_attempts=3, timeout_s=60,
                                max_queued=1000, route=None, route_reason=None, owner=None, start=start)
        done = await path.complete(job_id=job.id, owner="r1", attempt=1, result={"i": i}, backend="local:m", cost=None,
                                   grant=[])
        row = await path.get(job.id)
        assert row is not None and row["status"] == "succeeded"
        return done.status

    try:
        return list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        path.close()


def test_the_job_path_runs_behind_pgbouncer_in_transaction_mode_without_prepared_statements(bouncer):
    assert asyncio.run(_job_path(bouncer, prepared=False)) == [JobStatus.succeeded] * 24


def test_with_prepared_statements_pgbouncer_in_transaction_mode_loses_them(bouncer):
    import asyncpg

    # "prepared statement ... does not exist" (prepared on another server connection), or "... already
    # exists" (another client's statement of the same name on this one)
    lost = (asyncpg.exceptions.InvalidSQLStatementNameError, asyncpg.exceptions.DuplicatePreparedStatementError)
    with pytest.raises(lost):
        asyncio.run(_job_path(bouncer, prepared=True, n=48))
