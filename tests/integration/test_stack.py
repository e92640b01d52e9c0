"""`gpu-orch up`/`down` bookkeeping without a Ray cluster: state.json is private, `down` finds and
stops services from their pidfiles alone, `up` refuses clearly (starting nothing) when it cannot
reach Ray, and the embedded Redis has a memory bound."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import redis

from gpu_orchestrator.ops import embedded, ray_auth, stack

ROOT = Path(__file__).resolve().parents[2]
GPU_ORCH = str(Path(sys.executable).parent / "gpu-orch")


def gpu_orch(args: list[str], home: Path, **env_extra: str) -> subprocess.CompletedProcess:
    """The CLI as a user on a fresh machine runs it: HOME empty, no URLs, no Ray token vars."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "RAY_ADDRESS", *ray_auth.ENV_VARS)}
    fresh_home = home.parent / "user-home"
    fresh_home.mkdir(exist_ok=True)
    env.update(HOME=str(fresh_home), GPU_ORCH_HOME=str(home), **env_extra)
    return subprocess.run([GPU_ORCH, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tmp():
    """Not under pytest's tmp_path: another pytest session on the machine resets its root to 0700,
    and an embedded Postgres running as its own system user (we are root) loses its data dir."""
    d = Path(tempfile.mkdtemp(prefix="gpu-orch-stack-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_state_and_token_files_are_private(tmp):
    home = tmp / "home"
    stack.save_state(home, {"database_url": "postgresql://u:secret@db/x"})
    assert mode(stack.state_path(home)) == 0o600
    # A state file an older version left world-readable is replaced by a private one.
    stack.state_path(home).chmod(0o644)
    stack.save_state(home, {"database_url": "postgresql://u:secret@db/y"})
    assert mode(stack.state_path(home)) == 0o600 and "db/y" in stack.state_path(home).read_text()
    assert [p.name for p in home.iterdir()] == ["state.json"]  # no temp file left behind

    token = ray_auth.ensure_token(home)
    assert mode(token) == 0o600 and len(token.read_text()) == 64
    assert ray_auth.ensure_token(home).read_text() == token.read_text()  # kept across `up`s
    token.write_text("")  # an interrupted older write: treated as missing, never reused
    assert len(ray_auth.ensure_token(home).read_text()) == 64 and mode(token) == 0o600


def _fake_ray_head(tmp: Path) -> tuple[int, int]:
    """A process that looks like `ray start --head --block` and has a child in its process group
    that outlives it (as a hung raylet would): down must stop both."""
    fake = tmp / "bin" / "ray"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\n"
                    "import signal, subprocess, sys, time\n"
                    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', 'raylet'])\n"
                    "print(child.pid, flush=True)\n"
                    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
                    "time.sleep(600)\n")
    fake.chmod(0o755)
    # Launched through a parent that exits at once, as `gpu-orch up` does: not this test's child.
    out = subprocess.run([sys.executable, "-c",
                          "import subprocess, sys; p = subprocess.Popen(sys.argv[1:], start_new_session=True, "
                          "stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True); "
                          "print(p.pid, p.stdout.readline().strip())",
                          str(fake), "start", "--head", "--block"], capture_output=True, text=True, check=True)
    head, child = map(int, out.stdout.split())
    return head, child


def test_down_finds_services_from_pidfiles_without_state_file(tmp):
    home = tmp / "home"
    home.mkdir()
    pids: dict[str, int | None] = {}
    try:
        embedded.start_postgres(home / "postgres")
        embedded.start_redis(home / "redis")
        pids = {"postgres": embedded.postgres_pid(home / "postgres"), "redis": embedded.redis_pid(home / "redis")}
        pids["ray"], pids["raylet"] = _fake_ray_head(tmp)
        (home / "ray").mkdir()
        (home / "ray" / "head.pid").write_text(f"{pids['ray']} 6399\n")
        assert all(alive(p) for p in pids.values()) and not stack.state_path(home).exists()

        r = gpu_orch(["down"], home)
        assert r.returncode == 0, r.stderr
        assert "stopping the Ray head" in r.stdout and "stopping embedded Redis" in r.stdout
        assert "stopping embedded Postgres" in r.stdout
        assert [n for n, p in pids.items() if alive(p)] == []
        assert not (home / "ray" / "head.pid").exists()
        again = gpu_orch(["down"], home)
        assert again.returncode == 0 and "nothing to stop" in again.stdout
        assert (home / "postgres" / "PG_VERSION").exists()  # data is kept
    finally:
        embedded.stop_redis(home / "redis")
        embedded.stop_postgres(home / "postgres")
        for p in (pids.get("ray"), pids.get("raylet")):
            if p and alive(p):
                os.kill(p, 9)


def test_stale_pidfile_never_signals_another_process(tmp):
    home = tmp / "home"
    (home / "redis").mkdir(parents=True)
    (home / "ray").mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (home / "redis" / "redis.pid").write_text(f"{other.pid}\n")  # its pid reused by an unrelated process
        (home / "ray" / "head.pid").write_text(f"{other.pid} 6399\n")
        r = gpu_orch(["down"], home)
        assert r.returncode == 0 and "nothing to stop" in r.stdout
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_up_against_a_cluster_without_token_says_what_it_needs(tmp):
    home = tmp / "home"
    r = gpu_orch(["up"], home, RAY_ADDRESS="10.0.0.1:6380")
    assert r.returncode != 0
    for needed in ("RAY_ADDRESS=10.0.0.1:6380", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", ".ray/auth_token",
                   "ray get-auth-token"):
        assert needed in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    # Checked before anything starts.
    assert not (home / "postgres").exists() and not stack.state_path(home).exists()


def test_up_with_ray_port_taken_says_so_and_starts_nothing(tmp):
    home = tmp / "home"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = gpu_orch(["up"], home, GPU_ORCH_RAY_PORT=str(port))
    assert r.returncode != 0
    assert f"Ray's port {port} is in use" in r.stderr and "GPU_ORCH_RAY_PORT" in r.stderr, r.stderr
    assert not (home / "postgres").exists() and not stack.state_path(home).exists()


def test_embedded_redis_has_a_memory_bound(tmp):
    data = tmp / "redis"
    url = embedded.start_redis(data)
    try:
        r = redis.Redis.from_url(url)
        assert r.config_get("maxmemory")["maxmemory"] == str(256 * 1024 * 1024)
        # Only keys with a TTL may be evicted (every events stream and cancel flag has one).
        assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "volatile-lru"
        # A running one takes a new bound when `up` runs again with another GPU_ORCH_REDIS_MAXMEMORY.
        embedded.start_redis(data, maxmemory="64mb")
        assert r.config_get("maxmemory")["maxmemory"] == str(64 * 1024 * 1024)
        r.close()
    finally:
        embedded.stop_redis(data)


def test_embedded_postgres_restarts_after_a_crash_in_the_same_process():
    """pgserver caches its server per data dir: a crashed one must still be started again."""
    import signal
    import time

    import sqlalchemy as sa

    from gpu_orchestrator.ops import embedded
    from gpu_orchestrator.store.pg_engine import create_engine

    root = Path(tempfile.mkdtemp(prefix="gpu-orch-pgcrash-"))
    os.chmod(root, 0o755)
    try:
        url = embedded.start_postgres(root / "pg")
        os.kill(embedded.postgres_pid(root / "pg"), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while embedded.postgres_pid(root / "pg") is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert embedded.start_postgres(root / "pg") == url
        eng = create_engine(url, poolclass=sa.pool.NullPool)
        with eng.connect() as c:
            assert c.execute(sa.text("SELECT 1")).scalar() == 1
        eng.dispose()
    finally:
        embedded.stop_postgres(root / "pg")
        shutil.rmtree(root, ignore_errors=True)
