"""What an idle stack costs: CPU per process of `gpu-orch up --demo` over a minute with no jobs.

    python bench/idle.py [--seconds 60] [--settle 30] [--home GPU_ORCH_HOME]

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


def stack_processes(home: Path) -> list[psutil.Process]:
    from gpu_orchestrator import embedded

    state = json.loads((home / "state.json").read_text())
    roots = [state.get("ray_head_pid"), embedded.postgres_pid(home / "postgres"), embedded.redis_pid(home / "redis")]
    procs: dict[int, psutil.Process] = {}
    for pid in filter(None, roots):
        try:
            root = psutil.Process(pid)
        except psutil.Error:
            continue
        for p in [root, *root.children(recursive=True)]:
            procs[p.pid] = p
    return list(procs.values())


def cpu_of(procs: list[psutil.Process]) -> dict[int, tuple[str, float]]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = (kind(p), t.user + t.system)
        except psutil.Error:
            pass
    return out


def measure(home: Path, seconds: float) -> tuple[dict[str, float], int]:
    """CPU share of one core per process kind over `seconds` (processes started meanwhile counted
    from zero), and how many processes the stack has."""
    before = cpu_of(stack_processes(home))
    t0 = time.monotonic()
    time.sleep(seconds)
    procs = stack_processes(home)
    after = cpu_of(procs)
    wall = time.monotonic() - t0
    by_kind: dict[str, float] = {}
    for pid, (k, used) in after.items():
        spent = used - before.get(pid, (k, 0.0))[1]
        by_kind[k] = by_kind.get(k, 0.0) + spent / wall
    return by_kind, len(procs)


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


def report(home: Path, base: str, seconds: float) -> bool:
    by_kind, n = measure(home, seconds)
    total = sum(by_kind.values())
    print(f"\nidle stack CPU over {seconds:.0f} s ({n} processes; % of one core):")
    for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        if v >= 0.0005:
            print(f"  {k:<48} {v * 100:6.2f} %")
    live = uis_live(base)
    ok_live = all(code == 200 for code in live.values())
    print(f"  {'total':<48} {total * 100:6.2f} %")
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
    args = ap.parse_args()
    if args.home is not None:
        base = json.loads((args.home / "state.json").read_text())["url"]
        report(args.home, base, args.seconds)
        return
    from overhead import demo_stack

    with demo_stack() as (base, env):
        print(f"stack up at {base}; settling {args.settle:.0f} s ...", flush=True)
        time.sleep(args.settle)
        report(Path(env["GPU_ORCH_HOME"]), base, args.seconds)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
