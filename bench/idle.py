"""What an idle stack costs: CPU per process of `gpu-orch up --demo` over a minute with no jobs,
against the floor: a bare Ray head started as `up` starts it, with Serve's controller and proxy and
nothing deployed (what any Ray Serve application pays before its own code), measured in the same run.

    python bench/idle.py [--seconds 60] [--settle 30] [--home GPU_ORCH_HOME] [--no-floor]

Without --home it starts the demo stack as a user does (`gpu-orch up --demo` in a temporary
GPU_ORCH_HOME, free Ray ports), lets it settle (the arbiter's first decisions, the replicas'
start-up), measures, and stops it; with --home it measures the stack already running there. Every
process of the stack counts: the Ray head's tree (GCS, raylet, dashboard and its agents, the Serve
controller, proxy, router and UI replicas, idle workers) and the embedded Postgres and Redis.
Then it opens each UI and the API once: the UIs must still answer (an idle stack that saves CPU by
being dead does not pass).

Target (issue 27): <= 10% of one core in all (goal 5%). Prints the table, the total, PASS/MISS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

TARGET, GOAL = 0.10, 0.05  # of one core


def kind(p: psutil.Process) -> str:
    """A process's role in the stack, from its command line (Ray names its actors' processes)."""
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "gone"
    first = cmd.split(" ", 1)[0]
    if first.startswith("ray::ServeReplica:"):
        return "replica " + first.removeprefix("ray::ServeReplica:").split(".")[0]  # app:deployment
    if first.startswith("ray::"):
        return first.removeprefix("ray::")  # ServeController, ProxyActor, IDLE, ...
    for name in ("gcs_server", "raylet", "log_monitor", "monitor.py", "runtime_env/agent", "dashboard/agent",
                 "dashboard.py", "redis-server", "postgres"):
        if name in cmd:
            return {"runtime_env/agent": "runtime_env agent", "dashboard/agent": "dashboard agent",
                    "dashboard.py": "dashboard", "monitor.py": "monitor", "redis-server": "Redis (embedded)",
                    "postgres": "Postgres (embedded)"}.get(name, name)
    if "ray" in cmd and "start" in cmd and "--head" in cmd:
        return "ray start --block"
    return first.rsplit("/", 1)[-1] or "other"


def tree(pid: int | None) -> list[psutil.Process]:
    """A process and all its descendants (none if it is gone)."""
    try:
        root = psutil.Process(pid) if pid else None
    except psutil.Error:
        return []
    return [root, *root.children(recursive=True)] if root else []


def stack_processes(home: Path) -> list[psutil.Process]:
    from gpu_orchestrator.ops import embedded

    state = json.loads((home / "state.json").read_text())
    roots = [state.get("ray_head_pid"), embedded.postgres_pid(home / "postgres"), embedded.redis_pid(home / "redis")]
    return list({p.pid: p for pid in roots for p in tree(pid)}.values())


def cpu_of(procs: list[psutil.Process]) -> dict[int, tuple[str, float]]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = (kind(p), t.user + t.system)
        except psutil.Error:
            pass
    return out


def measure(processes: Callable[[], list[psutil.Process]], seconds: float) -> tuple[dict[str, float], int]:
    """CPU share of one core per process kind over `seconds` (processes started meanwhile counted
    from zero), and how many processes there are at the end."""
    before = cpu_of(processes())
    t0 = time.monotonic()
    time.sleep(seconds)
    procs = processes()
    after = cpu_of(procs)
    wall = time.monotonic() - t0
    by_kind: dict[str, float] = {}
    for pid, (k, used) in after.items():
        spent = used - before.get(pid, (k, 0.0))[1]
        by_kind[k] = by_kind.get(k, 0.0) + spent / wall
    return by_kind, len(procs)


def floor(seconds: float, settle: float) -> tuple[dict[str, float], int]:
    """A bare Ray head as `gpu-orch up` starts it (its environment, its dashboard, token auth) and
    `serve.start()`: Serve's controller and proxy, no application."""
    import subprocess
    import tempfile

    from overhead import free_port

    from gpu_orchestrator.ops import ray_auth, stack
    from gpu_orchestrator.ops.lifecycle import ray_cli, ray_env

    home = Path(tempfile.mkdtemp(prefix="gpu-orch-idle-floor-"))
    port, http = free_port(), free_port()
    env = ray_env(home, own_head=True)
    ray_auth.ensure_token(home)
    cmd = [ray_cli(), "start", "--head", "--block", f"--port={port}", "--num-cpus=8", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={free_port()}", "--disable-usage-stats"]
    print("starting the floor: a bare Ray head and Serve, nothing deployed ...", flush=True)
    pid = stack.start_ray_head(home, cmd, port=port, env=ray_auth.child_env(env))
    try:
        code = ("import ray; from ray import serve; ray.init(address='127.0.0.1:%d', log_to_driver=False); "
                "serve.start(http_options={'host': '127.0.0.1', 'port': %d})" % (port, http))
        subprocess.run([sys.executable, "-c", code], env={**os.environ, **ray_auth.child_env(env)}, check=True,
                       capture_output=True, timeout=300)
        time.sleep(settle)
        return measure(lambda: tree(pid), seconds)
    finally:
        stack.stop_ray_head(home)


def uis_live(base: str) -> dict[str, int]:
    paths = ["/v1/apps", "/ui/images/", "/ui/speech/", "/ui/chat/", "/ui/admin/"]
    out = {}
    with httpx.Client(base_url=base, timeout=60) as c:
        for p in paths:
            try:
                out[p] = c.get(p).status_code
            except httpx.HTTPError:
                out[p] = 0
    return out


def table(title: str, by_kind: dict[str, float]) -> float:
    total = sum(by_kind.values())
    print(f"\n{title}")
    for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        if v >= 0.0005:
            print(f"  {k:<48} {v * 100:6.2f} %")
    print(f"  {'total':<48} {total * 100:6.2f} %")
    return total


def report(home: Path, base: str, seconds: float, floor_total: float | None = None) -> bool:
    by_kind, n = measure(lambda: stack_processes(home), seconds)
    total = table(f"idle stack CPU over {seconds:.0f} s ({n} processes; % of one core):", by_kind)
    if floor_total is not None:
        print(f"  {'of which above the floor (bare Ray + Serve)':<48} {(total - floor_total) * 100:6.2f} %"
              f"   (ours / floor: {total / floor_total:.2f}x)")
    live = uis_live(base)
    ok_live = all(code == 200 for code in live.values())
    print(f"UIs and API answer after the idle minute: {'yes' if ok_live else 'NO'} ({live})")
    ok = total <= TARGET and ok_live
    print(f"idle CPU {total * 100:.1f}% of one core: target <= {TARGET * 100:.0f}% (goal {GOAL * 100:.0f}%): "
          f"{'PASS' if ok else 'MISS'}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=30.0, help="seconds after `up` before measuring")
    ap.add_argument("--home", type=Path, default=None, help="measure the stack running in this GPU_ORCH_HOME")
    ap.add_argument("--no-floor", action="store_true", help="skip the bare Ray + Serve measurement")
    args = ap.parse_args()
    floor_total = None
    if not args.no_floor:
        by_kind, n = floor(args.seconds, min(args.settle, 20.0))
        floor_total = table(f"floor: bare Ray head + Serve (controller, proxy), nothing deployed ({n} processes):", by_kind)
    if args.home is not None:
        base = json.loads((args.home / "state.json").read_text())["url"]
        report(args.home, base, args.seconds, floor_total)
        return
    from overhead import demo_stack

    with demo_stack() as (base, env):
        print(f"stack up at {base}; settling {args.settle:.0f} s ...", flush=True)
        time.sleep(args.settle)
        report(Path(env["GPU_ORCH_HOME"]), base, args.seconds, floor_total)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
