"""What `gpu-orch up` started, recorded so that `gpu-orch down` (or a failed `up`) stops it.

Each service is recorded as it starts, two ways: in GPU_ORCH_HOME/state.json (mode 600: it holds
the database URL) and by its own pidfile under GPU_ORCH_HOME (postgres/postmaster.pid,
redis/redis.pid, ray/head.pid). `down` reads both, so it finds every process even when `up` died
before writing state.json or the file is gone.

The Ray head runs as `ray start --head --block` in its own session: one pid whose SIGTERM stops
every Ray process of that head, and a process group that holds any it leaves. (`ray stop` would
stop every Ray instance on the machine, including ones gpu-orch did not start.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import embedded

STATE_FILE = "state.json"
RAY_START_LOG = "ray-start.log"


def state_path(home: Path) -> Path:
    return Path(home) / STATE_FILE


def load_state(home: Path) -> dict[str, Any]:
    try:
        data = json.loads(state_path(home).read_text())
    except (FileNotFoundError, ValueError):  # missing or torn: the pidfiles still find the services
        return {}
    return data if isinstance(data, dict) else {}


def write_private(path: Path, text: str) -> None:
    """Write a secret file whole (a temp file, then renamed: an interrupted write never leaves an
    empty or partial file that later runs would reuse), created 600: never readable by others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_state(home: Path, state: dict[str, Any]) -> None:
    """Write state.json (it holds the DB URL) with write_private."""
    write_private(state_path(home), json.dumps(state, indent=2))


# -- the Ray head ----------------------------------------------------------------------------------


def ray_head_pidfile(home: Path) -> Path:
    return Path(home) / "ray" / "head.pid"


def _read_head(home: Path) -> tuple[int, int] | None:
    try:
        pid, port = ray_head_pidfile(home).read_text().split()[:2]
        return int(pid), int(port)
    except (OSError, ValueError):
        return None


def _is_ray_start(pid: int) -> bool:
    import psutil

    try:
        cmd = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return "start" in cmd and "--head" in cmd and any(Path(a).name == "ray" for a in cmd)


def ray_head(home: Path) -> tuple[int, int] | None:
    """(pid, port) of the running `ray start --head --block` this home started, if any."""
    head = _read_head(home)
    return head if head and _is_ray_start(head[0]) else None


def free_port() -> int:
    """A TCP port free on loopback now (the OS's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT leftover is no conflict
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


# Ray gives its raylet a fixed 30 s to register with the GCS (ray/_private/node.py); a machine busy
# enough to miss that (a laptop building runtime_envs) usually makes it on a second start.
RAYLET_SLOW = "timed out during startup"


def start_ray_head(home: Path, cmd: list[str], *, port: int, env: dict[str, str], timeout_s: float = 180,
                   tries: int = 2) -> int:
    """Run `cmd` (a `ray start --head --block ...`) detached; its pid is in ray/head.pid before it
    is even up. Returns once Ray says it started; on failure stops it and raises with its output
    (once more first when Ray only ran out of its own startup wait)."""
    for attempt in range(1, tries + 1):
        try:
            return _start_ray_head(home, cmd, port=port, env=env, timeout_s=timeout_s)
        except RuntimeError as e:
            if RAYLET_SLOW not in str(e) or attempt == tries:
                raise
            print(f"ray start: {RAYLET_SLOW} (a busy machine); starting it again", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def _start_ray_head(home: Path, cmd: list[str], *, port: int, env: dict[str, str], timeout_s: float) -> int:
    run_dir = Path(home) / "ray"
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = run_dir / RAY_START_LOG
    with open(log, "ab") as out:
        offset = out.tell()
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group, out of reach of our Ctrl-C
    ray_head_pidfile(home).write_text(f"{proc.pid} {port}\n")
    deadline = time.monotonic() + timeout_s
    while True:
        time.sleep(0.5)
        with open(log, "rb") as f:
            f.seek(offset)
            output = f.read().decode(errors="replace")
        if "Ray runtime started" in output:
            return proc.pid
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {proc.returncode}" if proc.returncode is not None else f"not up after {timeout_s:g}s"
            stop_ray_head(home)
            tail = re.sub(r"\x1b\[[0-9;]*m", "", output).strip().splitlines()[-12:]  # Ray colours its output
            raise RuntimeError(f"ray start {why}: {tail[-1] if tail else '(no output)'}\n"
                               f"--- the end of its output ({log}) ---\n" + "\n".join(tail))


def stop_ray_head(home: Path, timeout_s: float = 60) -> bool:
    """Stop the Ray head this home started (SIGTERM to `ray start --block`, which stops its Ray
    processes), then anything left in its process group. Returns whether anything was running."""
    import psutil

    head = _read_head(home)
    if head is None:
        return False
    pid, port = head
    stopped = False
    if _is_ray_start(pid):
        embedded.send_signal(pid, signal.SIGTERM)
        if not embedded.wait_gone(pid, timeout_s):
            embedded.send_signal(pid, signal.SIGKILL)
        stopped = True
    left = _group(pid)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    for p in left:
        embedded.wait_gone(p.pid, 10)
    ray_head_pidfile(home).unlink(missing_ok=True)
    _forget_ray_address(port)
    return stopped or bool(left)


def _group(pgid: int) -> list:
    """Ray processes still in the process group `ray start` led (pgid = its pid: we started it
    in a new session, and Linux does not reuse a pid while its group has members)."""
    import psutil

    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.pid != os.getpid() and os.getpgid(p.pid) == pgid and \
                    "ray" in (p.info["name"] or "") + " ".join(p.info["cmdline"] or ()):
                out.append(p)
        except (OSError, psutil.Error):
            pass
    return out


def _forget_ray_address(port: int) -> None:
    """`ray start` writes the head's address to Ray's temp dir (ray_current_cluster) and only
    `ray stop` removes it; left behind, it sends every later address-less ray.init() on this
    machine to the dead head instead of starting a local one."""
    try:
        from ray._common.utils import get_ray_address_file

        path = Path(get_ray_address_file(None))
    except Exception:
        path = Path("/tmp/ray/ray_current_cluster")
    try:
        if path.read_text().strip().endswith(f":{port}") and not port_in_use(port):
            path.unlink()
    except OSError:
        pass


# -- everything ------------------------------------------------------------------------------------


def running(home: Path, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The services of this home that are running: {"ray": pid, "redis": dir, "postgres": dir}.
    Found from state.json and, without it, from the pidfiles at their default places."""
    home = Path(home)
    state = load_state(home) if state is None else state
    out: dict[str, Any] = {}
    head = _read_head(home)
    if head and (_is_ray_start(head[0]) or _group(head[0])):
        out["ray"] = head[0]
    redis_dir = Path(state.get("embedded_redis") or home / "redis")
    if embedded.redis_pid(redis_dir) is not None:
        out["redis"] = redis_dir
    pg_dir = Path(state.get("embedded_postgres") or home / "postgres")
    if embedded.postgres_pid(pg_dir) is not None:
        out["postgres"] = pg_dir
    return out


def stop(home: Path, names: list[str] | None = None, state: dict[str, Any] | None = None,
         say=lambda msg: None) -> list[str]:
    """Stop this home's running services (all, or those in `names`): Ray first (its replicas hold
    connections to the other two), then Redis, then Postgres. Returns what was stopped."""
    found = running(home, state)
    stopped = []
    for name in ("ray", "redis", "postgres"):
        if name not in found or (names is not None and name not in names):
            continue
        say(f"stopping {'the Ray head' if name == 'ray' else 'embedded ' + name.capitalize()} ...")
        ok = stop_ray_head(home) if name == "ray" else \
            embedded.stop_redis(found[name]) if name == "redis" else embedded.stop_postgres(found[name])
        if ok:
            stopped.append(name)
    return stopped
