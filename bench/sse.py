"""Many SSE subscribers on one router replica: what each costs while it waits.

    python bench/sse.py [--subscribers 500] [--window 20] [--services embedded|machine|env]

Submits one long `echo` job per subscriber (progress every second while it runs; most wait queued
behind the app's in-flight cap), opens GET /v1/jobs/{id}/events for each at once, and while they
wait measures the router replica's and the Serve proxy's memory (RSS) and CPU per subscriber, the
Postgres connections the stack holds (a waiting subscriber must hold none: the count stays at the
router's pools, whatever the number of streams) and Redis's connected clients. Then cancels every
job: PASS when every subscriber saw its job's terminal event.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import cpu_seconds, deploy_ours, stack  # noqa: E402

ROUTER, PROXY = "orchestrator:router", "Serve proxy"
POOLS = 5 + 5 + 2 + 1 + 10 + 1  # PostgresJobStore.connect: pool_size + max_overflow, the lease pool's, asyncpg's, LISTEN


def rss_kib() -> dict[str, int]:
    """Resident memory of the router replica and the proxy, KiB."""
    out: dict[str, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        kind = ROUTER if cmd.startswith("ray::ServeReplica:orchestrator:router") else PROXY if cmd.startswith("ray::ProxyActor") else None
        if kind:
            rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            out[kind] = out.get(kind, 0) + rss
    return out


def pg_connections(db: str) -> tuple[int, int]:
    """(connections to the database, those inside a transaction) from pg_stat_activity."""
    import sqlalchemy as sa

    from gpu_orchestrator.store.pg_engine import create_engine

    eng = create_engine(db, poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            row = c.execute(sa.text(
                "SELECT count(*), count(*) FILTER (WHERE state LIKE 'idle in transaction%' OR state = 'active') "
                "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")).one()
        return int(row[0]), int(row[1])
    finally:
        eng.dispose()


async def redis_clients(rd: str) -> int:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(rd)
    try:
        return int((await r.info("clients"))["connected_clients"])
    finally:
        await r.aclose()


async def run(base: str, db: str, rd: str, n: int, window_s: float) -> bool:
    limits = httpx.Limits(max_connections=n + 16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(30, read=None), limits=limits) as c:
        idle_rss, idle_pg, idle_redis = rss_kib(), pg_connections(db), await redis_clients(rd)
        ids = []
        for i in range(n):
            r = await c.post("/v1/jobs", json={"app_id": "echo", "params": {"delay_s": 600, "steps": 600}})
            r.raise_for_status()
            ids.append(r.json()["job_id"])
        opened, ended, events = 0, {}, 0

        async def subscribe(job_id: str) -> None:
            nonlocal opened, events
            async with c.stream("GET", f"/v1/jobs/{job_id}/events") as s:
                s.raise_for_status()
                opened += 1
                async for line in s.aiter_lines():
                    if line.startswith("data: "):
                        events += 1
                        for status in ('"cancelled"', '"succeeded"', '"failed"'):
                            if status in line and '"status"' in line:
                                ended[job_id] = status.strip('"')

        tasks = [asyncio.create_task(subscribe(j)) for j in ids]
        t0 = time.monotonic()
        while opened < n and time.monotonic() - t0 < 120 and not any(t.done() for t in tasks):
            await asyncio.sleep(0.2)
        failed = [t for t in tasks if t.done() and t.exception()]
        if opened < n or failed:
            raise RuntimeError(f"only {opened} of {n} streams opened" + (f": {failed[0].exception()!r}" if failed else ""))
        await asyncio.sleep(2)  # settled
        cpu0, ev0 = cpu_seconds(), events
        await asyncio.sleep(window_s)
        cpu1, open_rss = cpu_seconds(), rss_kib()
        waiting_pg, waiting_redis = pg_connections(db), await redis_clients(rd)
        ev = events - ev0
        for j in ids:
            await c.delete(f"/v1/jobs/{j}")
        await asyncio.wait(tasks, timeout=60)
        saw_end = sum(1 for j in ids if ended.get(j) == "cancelled")

    print(f"{n} subscribers open on one router replica for {window_s:g} s ({ev} events delivered meanwhile: "
          f"progress of the running jobs)")
    for kind in (ROUTER, PROXY):
        per = (open_rss.get(kind, 0) - idle_rss.get(kind, 0)) / n
        cpu = (cpu1.get(kind, 0) - cpu0.get(kind, 0)) / window_s * 1000 / n
        print(f"  {kind:<22} memory {idle_rss.get(kind, 0) / 1024:7.1f} MiB idle -> {open_rss.get(kind, 0) / 1024:7.1f} MiB "
              f"({per:6.1f} KiB per subscriber); CPU {cpu:.3f} ms/s per subscriber")
    print(f"  Postgres connections: {idle_pg[0]} before the streams, {waiting_pg[0]} with {n} waiting "
          f"({waiting_pg[1]} in a transaction or a query at that moment)")
    print(f"  Redis clients: {idle_redis} before, {waiting_redis} with {n} waiting")
    # The router's pools may open a few connections for the submits and the streams' first reads,
    # and keep them; waiting subscribers must not need more, nor be in a query.
    no_pg = waiting_pg[0] <= POOLS and waiting_pg[1] <= 1
    print(f"{'PASS' if no_pg else 'MISS'}  no subscriber holds a Postgres connection while it waits "
          f"({waiting_pg[0]} connections with {n} open streams, within the router's pools of {POOLS}; "
          f"{waiting_pg[1]} busy)")
    print(f"{'PASS' if saw_end == n else 'MISS'}  every subscriber saw its job end ({saw_end} of {n}, after a cancel)")
    return no_pg and saw_end == n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=500)
    ap.add_argument("--window", type=float, default=20.0, help="seconds measured while every stream waits")
    ap.add_argument("--services", choices=("embedded", "machine", "env"), default="embedded")
    args = ap.parse_args()

    with stack(args.services) as (base, db, rd, where):
        deploy_ours(db, rd, max_in_flight=16)
        print(f"services: {where}")
        ok = asyncio.run(run(base, db, rd, args.subscribers, args.window))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
