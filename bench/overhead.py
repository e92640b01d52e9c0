"""Overhead of the full job path vs a plain Ray Serve no-op deployment, measured in one run.

    python bench/overhead.py [--jobs 300] [--concurrency 32]

Ours: POST /v1/jobs -> Postgres row -> dispatcher claim -> echo model replica -> result row ->
terminal event on the SSE stream (what a client waits for). Baseline: a plain Serve deployment that
returns its input, called over HTTP. Both on the same Ray instance, same HTTP proxy, same machine.
Uses DATABASE_URL/REDIS_URL if set, else the machine's 127.0.0.1 services if reachable, else embedded.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def services() -> tuple[str, str, str]:
    db, rd = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if db and rd:
        return db, rd, "environment"
    if _port_open(5432) and _port_open(6379):
        return "postgresql://postgres@127.0.0.1:5432/postgres", "redis://127.0.0.1:6379/0", "machine services"
    from gpu_orchestrator import embedded

    home = Path(tempfile.mkdtemp(prefix="gpu-orch-bench-"))
    os.chmod(home, 0o755)
    return embedded.start_postgres(home / "pg"), embedded.start_redis(home / "redis"), "embedded"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def ours_one(c: httpx.AsyncClient, i: int) -> float:
    return await asyncio.wait_for(_ours_one(c, i), timeout=JOB_DEADLINE_S)  # a stuck job fails the bench


JOB_DEADLINE_S = 120.0


async def _ours_one(c: httpx.AsyncClient, i: int) -> float:
    t0 = time.perf_counter()
    r = await c.post("/v1/jobs", json={"app_id": "echo", "params": {"message": f"m{i}"}})
    r.raise_for_status()
    job_id = r.json()["job_id"]
    async with c.stream("GET", f"/v1/jobs/{job_id}/events") as s:
        async for line in s.aiter_lines():
            if line.startswith("data: ") and '"succeeded"' in line:
                return time.perf_counter() - t0
            if line.startswith("data: ") and ('"failed"' in line or '"cancelled"' in line):
                raise RuntimeError(f"job {job_id} did not succeed: {line}")
    raise RuntimeError(f"stream for {job_id} ended without a terminal event")


async def base_one(c: httpx.AsyncClient, i: int) -> float:
    t0 = time.perf_counter()
    r = await c.post("/noop", json={"message": f"m{i}"})
    r.raise_for_status()
    return time.perf_counter() - t0


async def measure(fn, base: str, n: int, concurrency: int) -> tuple[list[float], float]:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as c:
        async def one(i: int) -> float:
            async with sem:
                return await fn(c, i)

        for i in range(min(20, n)):  # warm-up, sequential
            await fn(c, i)
        t0 = time.perf_counter()
        lats = await asyncio.gather(*(one(i) for i in range(n)))
        return list(lats), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--sequential", type=int, default=100, help="jobs for the unloaded latency figure")
    args = ap.parse_args()

    import ray
    from ray import serve

    from gpu_orchestrator.serve.app import build_app

    db, rd, where = services()
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    orch_args = copy.deepcopy(next(a for a in cfg["applications"] if a["name"] == "orchestrator")["args"])
    orch_args.update(database_url=db, redis_url=rd)
    # The echo model alone, always resident: the job path's own overhead, no GPU models, no arbiter
    # (its autoscaling policy applies only through a config deploy, not serve.run).
    orch_args["models"] = {"echo": {**orch_args["models"]["echo"], "max_ongoing_requests": 64}}
    orch_args["apps"] = [{**next(a for a in orch_args["apps"] if a["id"] == "echo"), "max_in_flight": 64}]
    orch_args["arbiter"] = {**orch_args.get("arbiter", {}), "enabled": False}
    serve.run(build_app(orch_args), name="orchestrator", route_prefix="/")

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
    class Noop:
        async def __call__(self, request):
            return await request.json()

    serve.run(Noop.bind(), name="noop", route_prefix="/noop")
    base = f"http://127.0.0.1:{port}"
    print(f"services: {where}; Ray {ray.__version__}; {os.cpu_count()} cores")

    rows = []
    for label, fn in (("plain Serve no-op (HTTP)", base_one), ("gpu-orch full job path (echo)", ours_one)):
        seq, _ = asyncio.run(measure(fn, base, args.sequential, 1))
        lats, wall = asyncio.run(measure(fn, base, args.jobs, args.concurrency))
        rows.append((label, args.jobs / wall, pct(seq, 50), pct(seq, 99), pct(lats, 50), pct(lats, 99)))

    print(f"\n{args.sequential} sequential jobs (unloaded latency), then {args.jobs} jobs at concurrency {args.concurrency}:")
    hdr = f"{'path':<32}{'jobs/s':>9}{'p50 seq ms':>12}{'p99 seq ms':>12}{'p50 load ms':>13}{'p99 load ms':>13}"
    print(hdr)
    print("-" * len(hdr))
    for label, tput, s50, s99, l50, l99 in rows:
        print(f"{label:<32}{tput:>9.1f}{s50 * 1e3:>12.1f}{s99 * 1e3:>12.1f}{l50 * 1e3:>13.1f}{l99 * 1e3:>13.1f}")
    b, o = rows
    print(
        f"\nratio ours/baseline: throughput {o[1] / b[1]:.2f}x, unloaded p50 latency {o[2] / b[2]:.1f}x, "
        f"p99 {o[3] / b[3]:.1f}x; loaded p50 {o[4] / b[4]:.1f}x, p99 {o[5] / b[5]:.1f}x"
    )
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
