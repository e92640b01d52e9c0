"""Job-path speed: ours vs Ray Serve's own async inference (task_consumer + Celery over Redis) vs a
plain Serve no-op, measured in one run.

    python bench/overhead.py [--stack demo|echo] [--jobs 400] [--clients 8] [--rounds 3]

`--stack demo` (default) measures ours on the stack a user starts: `gpu-orch up --demo` in a
temporary GPU_ORCH_HOME (every app and UI deployed, the arbiter on, embedded Postgres and Redis);
the peer and the plain no-op run beside it on a second local Ray instance (their own Serve proxy,
an embedded Redis for Celery). Both stacks idle while the other is measured; each pays the other's
idle cost alike. `--stack echo` puts all three on one Ray instance with the echo model alone (the
job path's own cost, nothing else deployed).

The same client drives every path: `--clients` closed-loop clients, each submits a no-op job over
HTTP and polls its status every `--poll-ms` until it is terminal, then submits the next. Paths:

  ours (poll)   POST /v1/jobs -> Postgres row -> the accepting router starts it on the echo model
                replica -> result row; GET /v1/jobs/{id} until terminal
  ours (SSE)    the same submit, then GET /v1/jobs/{id}/events until the terminal event
  ours (wait)   POST /v1/jobs with `Prefer: wait=10`: one request, the answer is the ended job
  ours (wait, API key)  the same with `Authorization: Bearer` and a key without quotas (made with
                `gpu-orch keys create`): a stack that runs open still checks a key in full, so
                this is the cost of auth on
  peer          Ray Serve async inference as its docs build it: an ingress that enqueues with the
                Celery adapter (Redis broker and result backend) and reports the task's status, and a
                @task_consumer deployment with a no-op @task_handler
  plain Serve   POST to a no-op deployment (one request: the ceiling for any Serve intake here)

Rounds alternate the paths; each path's best round is shown, and the verdicts take the median over
the rounds of each round's own ratio (ours against the peer run a minute apart: the machine's drift
between rounds, a fifth here, cancels). Then `--sequential` jobs one at a time give the unloaded
submit-to-terminal latency, in a pass per round (order alternated; the verdict: the median of each
pass's ratio to the plain request). Prints jobs/s, p50, p99, CPU per job by process,
the ratios, and PASS/MISS against issue 25's targets. Needs the bench extra (`pip install -e '.[bench]'`).

Services for the peer (and for ours with `--stack echo`): `embedded` (default), `machine`
(127.0.0.1:5432 and :6379), or `env` (DATABASE_URL, REDIS_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpu_orchestrator.ops.ingress import HAPROXY_ENV, HAPROXY_PORTS, ingress_env  # noqa: E402
from gpu_orchestrator.ops.stack import free_port  # noqa: E402

TERMINAL_OURS = {"succeeded", "failed", "cancelled"}
TERMINAL_PEER = {"SUCCESS", "FAILURE", "REVOKED"}
JOB_DEADLINE_S = 60.0  # a stuck job fails the bench instead of hanging it

# Targets (issue 25): (what, first bar, goal, higher is better).
TARGETS = {
    "wait_tput": ("ours Prefer: wait jobs/s vs the peer's", 1.0, 1.5, True),
    "wait_p50": ("ours Prefer: wait p50 under load vs the peer's", 1.0, 0.6, False),
    "unloaded": ("ours unloaded Prefer: wait vs one plain Serve request", 2.0, 1.5, False),
    "poll_tput": ("ours submit + poll jobs/s vs the peer's", 0.6, 1.0, True),
    "router_cpu": ("router replica CPU ms per Prefer: wait job", 8.0, 6.0, False),
    "auth_cpu": ("router CPU per Prefer: wait job with an API key vs without", 1.1, 1.1, False),
}
KEYED = "ours (Prefer: wait=10, API key)"


def services(how: str) -> tuple[str, str, str, Callable[[], None]]:
    """(database url, redis url, what they are, how to stop them)."""
    if how == "env":
        return os.environ["DATABASE_URL"], os.environ["REDIS_URL"], "DATABASE_URL / REDIS_URL", lambda: None
    if how == "machine":
        return ("postgresql://postgres@127.0.0.1:5432/postgres", "redis://127.0.0.1:6379/0", "127.0.0.1 services",
                lambda: None)
    from gpu_orchestrator.ops import embedded

    home = Path(tempfile.mkdtemp(prefix="gpu-orch-bench-"))
    os.chmod(home, 0o755)  # the embedded Postgres runs as its own user when we are root

    def stop() -> None:
        embedded.stop_postgres(home / "pg")
        embedded.stop_redis(home / "redis")
        shutil.rmtree(home, ignore_errors=True)

    return embedded.start_postgres(home / "pg"), embedded.start_redis(home / "redis"), "embedded", stop


def celery_urls(redis_url: str) -> tuple[str, str]:
    """The peer's broker and result-backend URLs for the same Redis (kombu and Celery spell a unix
    socket `redis+socket://`, redis-py `unix://`)."""
    if redis_url.startswith("unix://"):
        url = "redis+socket://" + redis_url[len("unix://"):].split("?")[0]
        return url, url
    return redis_url, redis_url


# The rest of Ray by process, so a cost that moves there (logs, events, the controller) shows up.
RAY_PARTS = (("ray::ServeController", "Serve controller"), ("/raylet", "raylet"), ("gcs_server", "GCS"),
             ("log_monitor", "log monitor"), ("dashboard/agent", "dashboard agent"),
             ("runtime_env/agent", "dashboard agent"), ("dashboard.py", "dashboard"))


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far by process kind (Linux /proc): Serve's proxy and each replica by name,
    Postgres and Redis summed over their processes, this client, Ray's own processes by name
    (RAY_PARTS), anything else as `other`."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        used = (int(fields[11]) + int(fields[12])) / tick
        if int(pid) == os.getpid():
            kind = "client"
        elif cmd.startswith("ray::ServeReplica:"):
            kind = cmd.split()[0].removeprefix("ray::ServeReplica:").split(".")[0]  # app:deployment (.method varies)
        elif cmd.startswith("ray::ProxyActor"):
            kind = "Serve proxy"
        elif cmd.startswith("postgres"):
            kind = "Postgres"
        elif "redis-server" in cmd:
            kind = "Redis"
        else:
            kind = next((name for part, name in RAY_PARTS if part in cmd), "other")
        out[kind] = out.get(kind, 0.0) + used
    return out


def cpu_per_job(before: dict[str, float], after: dict[str, float], jobs: int) -> dict[str, float]:
    """CPU milliseconds per job by process kind, largest first."""
    ms = {k: (after[k] - before.get(k, 0.0)) * 1000 / jobs for k in after}
    return dict(sorted(((k, v) for k, v in ms.items() if v >= 0.05), key=lambda kv: -kv[1]))


def router_ms(spent: dict[str, float]) -> float:
    """The router replica's CPU ms per job, from cpu_per_job's breakdown."""
    return spent.get("orchestrator:router", 0.0)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


# -- the client: one shape for every path ---------------------------------------------------------

Job = Callable[[httpx.AsyncClient, int], Awaitable[float]]


def poll_client(submit_path: str, status_path: str, body: Callable[[int], dict], terminal: set[str],
                ok: str, poll_s: float, headers: dict[str, str] | None = None) -> Job:
    async def one(c: httpx.AsyncClient, i: int) -> float:
        t0 = time.perf_counter()
        r = await c.post(submit_path, json=body(i), headers=headers)
        r.raise_for_status()
        job = r.json()
        while job["status"] not in terminal:
            await asyncio.sleep(poll_s)
            r = await c.get(status_path.format(id=job["job_id"]))
            r.raise_for_status()
            job = {**r.json(), "job_id": job["job_id"]}
        if job["status"] != ok:
            raise RuntimeError(f"job {job['job_id']} ended {job['status']}: {job}")
        return time.perf_counter() - t0
    return one


async def ours_sse(c: httpx.AsyncClient, i: int) -> float:
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


async def plain(c: httpx.AsyncClient, i: int) -> float:
    t0 = time.perf_counter()
    r = await c.post("/noop", json={"message": f"m{i}"})
    r.raise_for_status()
    return time.perf_counter() - t0


async def closed_loop(fn: Job, base: str, n: int, clients: int) -> tuple[list[float], float]:
    """`clients` loops, each running jobs back to back until n have run; (latencies, wall s)."""
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    async with httpx.AsyncClient(base_url=base, timeout=JOB_DEADLINE_S, limits=limits) as c:
        for i in range(min(clients, n)):  # warm-up: connections open, code paths hot
            await asyncio.wait_for(fn(c, -1 - i), JOB_DEADLINE_S)
        todo = iter(range(n))
        lats: list[float] = []

        async def loop() -> None:
            for i in todo:
                lats.append(await asyncio.wait_for(fn(c, i), JOB_DEADLINE_S))

        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        return lats, time.perf_counter() - t0


# -- the deployments ------------------------------------------------------------------------------

def deploy_ours(db: str, rd: str, *, max_in_flight: int = 64) -> None:
    """The orchestrator app with the echo model alone, always resident."""
    from ray import serve

    from gpu_orchestrator.serve.app import build_app

    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    orch_args = copy.deepcopy(next(a for a in cfg["applications"] if a["name"] == "orchestrator")["args"])
    orch_args.update(database_url=db, redis_url=rd)
    # The echo model alone, always resident, as many in flight as the peer's consumer runs at once:
    # the job path's own cost, no GPU models. (The arbiter's autoscaling policy applies only through
    # a config deploy, not serve.run, and with one resident model it has nothing to decide.)
    orch_args["models"] = {"echo": {**orch_args["models"]["echo"], "max_ongoing_requests": max_in_flight}}
    orch_args["apps"] = [{**next(a for a in orch_args["apps"] if a["id"] == "echo"), "max_in_flight": max_in_flight}]
    orch_args["arbiter"] = {**orch_args.get("arbiter", {}), "enabled": False}
    serve.run(build_app(orch_args), name="orchestrator", route_prefix="/")



def deploy_peer(rd: str) -> None:
    """The peer and the plain no-op on the current Serve instance."""
    from fastapi import FastAPI
    from ray import serve
    from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig
    from ray.serve.task_consumer import instantiate_adapter_from_config, task_consumer, task_handler

    broker, backend = celery_urls(rd)
    peer_cfg = TaskProcessorConfig(queue_name="bench-noop",
                                   adapter_config=CeleryAdapterConfig(broker_url=broker, backend_url=backend))

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    @task_consumer(task_processor_config=peer_cfg)
    class PeerConsumer:
        @task_handler(name="noop")
        def noop(self, message: str) -> dict:
            return {"echo": {"message": message}}

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
    @serve.ingress(api)
    class PeerIngress:
        def __init__(self, consumer) -> None:
            self.adapter = instantiate_adapter_from_config(peer_cfg)

        @api.post("/")
        def submit(self, body: dict) -> dict:
            t = self.adapter.enqueue_task_sync("noop", kwargs={"message": body["message"]})
            return {"job_id": t.id, "status": t.status}

        @api.get("/{task_id}")
        def status(self, task_id: str) -> dict:
            t = self.adapter.get_task_status_sync(task_id)
            return {"status": t.status, "result": t.result}

    serve.run(PeerIngress.bind(PeerConsumer.bind()), name="peer", route_prefix="/peer")

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
    class Noop:
        async def __call__(self, request):
            return await request.json()

    serve.run(Noop.bind(), name="noop", route_prefix="/noop")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", choices=("demo", "echo"), default="demo",
                    help="ours on `gpu-orch up --demo` (default) or the echo model alone on the peer's Ray")
    ap.add_argument("--jobs", type=int, default=400, help="jobs per path per round")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--poll-ms", type=float, default=10.0)
    ap.add_argument("--sequential", type=int, default=50, help="jobs one at a time for the unloaded latency")
    ap.add_argument("--services", choices=("embedded", "machine", "env"), default="embedded")
    ap.add_argument("--profile", metavar="FILE", default=None,
                    help="py-spy the router replica during the first Prefer: wait round (collapsed stacks to FILE)")
    ap.add_argument("--ingress", choices=("serve", "haproxy"), default="serve",
                    help="ours: the HTTP ingress `gpu-orch up` starts (GPU_ORCH_INGRESS; serve is its default)")
    ap.add_argument("--peer-ingress", choices=("same", "haproxy", "serve"), default="same",
                    help="the peer's and the plain no-op's Ray instance: the same ingress as ours (default), "
                         "or Serve's Python proxy as Ray's async-inference docs leave it (serve)")
    args = ap.parse_args()
    peer_ingress = args.ingress if args.peer_ingress == "same" else args.peer_ingress
    if args.stack == "echo" and peer_ingress != args.ingress:
        raise SystemExit("--stack echo runs every path on one Ray instance: one ingress for all")
    # Read by Ray when it is first imported (below) and by the Ray instance it starts for the peer.
    os.environ.update(ingress_env(peer_ingress))
    ingress = f"ingress: ours {args.ingress}, peer and plain {peer_ingress}"
    if "serve" in (args.ingress, peer_ingress):  # what either side on Serve's proxy gets (up keeps this env's)
        ingress += ("; Serve's proxy to replicas: " +
                    ("gRPC" if ingress_env("serve")["RAY_SERVE_PROXY_USE_GRPC"] == "1" else "actor calls"))

    if args.stack == "echo":
        with stack(args.services) as (base, db, rd, where):
            deploy_ours(db, rd)
            deploy_peer(rd)
            run(args, base, base, f"ours: the echo model alone, on the peer's Ray instance; {where}; {ingress}",
                create_key({"DATABASE_URL": db}))
        return
    with demo_stack(args.ingress) as (ours, env):
        with stack(args.services) as (base, _db, rd, where):
            deploy_peer(rd)
            run(args, ours, base, f"ours: `gpu-orch up --demo` (its own Ray, embedded Postgres/Redis); peer and plain "
                                  f"on a second Ray instance; {where}; {ingress}", create_key(env))


def create_key(env: dict[str, str]) -> str:
    """An API key without quotas (`gpu-orch keys create`, as an operator makes one), for the keyed
    path: on a stack that runs open, a request that carries a key is still checked in full."""
    cli = str(Path(sys.executable).parent / "gpu-orch")
    out = subprocess.run([cli, "keys", "create", "--name", f"bench-{os.getpid()}", "--scopes", "submit,read"],
                         env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"gpu-orch keys create failed:\n{out.stderr[-2000:]}")
    return out.stdout.strip()


@contextlib.contextmanager
def demo_stack(ingress: str = "serve") -> Iterator[tuple[str, dict[str, str]]]:
    """`gpu-orch up --demo` in a temporary GPU_ORCH_HOME on free Ray ports, as a user starts it;
    `gpu-orch down` afterwards. Yields the API's base URL and the environment that names the stack."""
    import json

    home = Path(tempfile.mkdtemp(prefix="gpu-orch-bench-home-"))
    os.chmod(home, 0o755)  # the embedded Postgres runs as its own user when we are root
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "RAY_ADDRESS")}
    for var in (*HAPROXY_ENV, *HAPROXY_PORTS):  # the peer's ingress (main) is not ours: `up` sets its own
        env.pop(var, None)
    env.update(GPU_ORCH_HOME=str(home), GPU_ORCH_RAY_PORT=str(free_port()), GPU_ORCH_RAY_DASHBOARD_PORT=str(free_port()),
               GPU_ORCH_INGRESS=ingress)
    cli = str(Path(sys.executable).parent / "gpu-orch")
    try:
        print("starting the demo stack (gpu-orch up --demo) ...", flush=True)
        up = subprocess.run([cli, "up", "--demo"], env=env, cwd=ROOT, capture_output=True, text=True)
        if up.returncode != 0:
            raise SystemExit(f"gpu-orch up --demo failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
        yield json.loads((home / "state.json").read_text())["url"], {"GPU_ORCH_HOME": str(home)}
    finally:
        subprocess.run([cli, "down"], env=env, cwd=ROOT, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)



@contextlib.contextmanager
def stack(how: str) -> Iterator[tuple[str, str, str, str]]:
    """The services (see `services`), a local Ray and Serve on a free port: (base URL, database
    URL, Redis URL, what the services are). All stopped afterwards."""
    import ray
    from ray import serve

    db, rd, where, stop = services(how)
    try:
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}", db, rd, f"{where}; Ray {ray.__version__}; {os.cpu_count()} cores"
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        stop()


def profiler(out: str) -> "subprocess.Popen":
    """py-spy recording the router replica (collapsed stacks, idle time left out)."""
    pid = next(int(p) for p in filter(str.isdigit, os.listdir("/proc"))
               if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"ray::ServeReplica:orchestrator:router"))
    spy = str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "--nonblocking",
                             "-o", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(args: argparse.Namespace, ours: str, peer: str, where: str, key: str) -> None:
    print(f"{where}\n{args.clients} clients, poll every {args.poll_ms:g} ms, {args.jobs} jobs per path per round, "
          f"{args.rounds} rounds")

    poll_s = args.poll_ms / 1000
    echo = lambda i: {"app_id": "echo", "params": {"message": f"m{i}"}}  # noqa: E731
    paths: dict[str, tuple[str, Job]] = {
        "ours (poll)": (ours, poll_client("/v1/jobs", "/v1/jobs/{id}", echo, TERMINAL_OURS, "succeeded", poll_s)),
        "ours (SSE)": (ours, ours_sse),
        "ours (Prefer: wait=10)": (ours, poll_client("/v1/jobs", "/v1/jobs/{id}", echo, TERMINAL_OURS, "succeeded",
                                                     poll_s, headers={"Prefer": "wait=10"})),
        KEYED: (ours, poll_client("/v1/jobs", "/v1/jobs/{id}", echo, TERMINAL_OURS, "succeeded", poll_s,
                                  headers={"Prefer": "wait=10", "Authorization": f"Bearer {key}"})),
        "peer: Serve task_consumer + Celery": (peer, poll_client("/peer/", "/peer/{id}", lambda i: {"message": f"m{i}"},
                                                                 TERMINAL_PEER, "SUCCESS", poll_s)),
        "plain Serve no-op (1 request)": (peer, plain),
    }
    best: dict[str, tuple[float, float, float]] = {}
    cpu: dict[str, dict[str, float]] = {}
    rounds: list[dict[str, tuple[tuple[float, float, float], dict[str, float]]]] = []
    # Every path once before round 1, off the books: the demo's echo model is scaled to zero until its
    # first job, and its start (a new replica process) would count in round 1's first path.
    for base, fn in paths.values():
        asyncio.run(closed_loop(fn, base, args.clients, args.clients))
    for r in range(args.rounds):
        rounds.append({})
        order = list(paths) if r % 2 == 0 else list(reversed(paths))  # alternate: no path always goes first
        for name in order:
            base, fn = paths[name]
            spy = profiler(args.profile) if args.profile and r == 0 and name == "ours (Prefer: wait=10)" else None
            before = cpu_seconds()
            lats, wall = asyncio.run(closed_loop(fn, base, args.jobs, args.clients))
            spent = cpu_per_job(before, cpu_seconds(), args.jobs + args.clients)  # the warm-up jobs ran too
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
                spy.wait(timeout=60)
            row = (args.jobs / wall, pct(lats, 50), pct(lats, 99))
            top = ", ".join(f"{k} {v:.1f}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1])[:3])
            print(f"  round {r + 1} {name:<36} {row[0]:7.1f} jobs/s  p50 {row[1] * 1e3:6.1f} ms  p99 {row[2] * 1e3:6.1f} ms"
                  f"  CPU/job {sum(spent.values()):5.1f} ms ({top})", flush=True)
            rounds[-1][name] = (row, spent)
            if name not in best or row[0] > best[name][0]:
                best[name], cpu[name] = row, spent
    # Unloaded: one job at a time, in as many passes as rounds, the order alternated as the rounds'
    # (the box drifts between passes as between rounds); the verdict takes each pass's own ratio.
    lone = ("ours (poll)", "ours (Prefer: wait=10)", "plain Serve no-op (1 request)")
    passes: list[dict[str, float]] = []
    for r in range(args.rounds):
        passes.append({})
        for name in (lone if r % 2 == 0 else lone[::-1]):
            base, fn = paths[name]
            lats, _ = asyncio.run(closed_loop(fn, base, args.sequential, 1))
            passes[-1][name] = pct(lats, 50)
    unloaded = {name: statistics.median(p[name] for p in passes) for name in lone}

    hdr = f"{'path':<38}{'jobs/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
    print(f"\nbest of {args.rounds} rounds, {args.clients} closed-loop clients:\n{hdr}\n{'-' * len(hdr)}")
    for name, (tput, p50, p99) in best.items():
        print(f"{name:<38}{tput:>9.1f}{p50 * 1e3:>9.1f}{p99 * 1e3:>9.1f}")
    print(f"\nCPU per job, ms, by process ({os.cpu_count()} cores: the paths are CPU-bound here when the total "
          f"x jobs/s nears {os.cpu_count() * 1000} ms/s):")
    for name, spent in cpu.items():
        top = ", ".join(f"{k} {v:.1f}" for k, v in spent.items() if v >= 0.5)
        print(f"{name:<38}{sum(spent.values()):>6.1f}  ({top})")
    poll, sse, waited, keyed, peer_row, plain_row = (best[n] for n in paths)
    router_cpu, keyed_cpu = router_ms(cpu["ours (Prefer: wait=10)"]), router_ms(cpu[KEYED])
    u_poll, u_wait, u_plain = (unloaded[n] for n in ("ours (poll)", "ours (Prefer: wait=10)",
                                                     "plain Serve no-op (1 request)"))
    print(f"\nours (poll) vs peer: throughput {poll[0] / peer_row[0]:.2f}x, p50 {poll[1] / peer_row[1]:.2f}x")
    print(f"ours (SSE)  vs peer: throughput {sse[0] / peer_row[0]:.2f}x, p50 {sse[1] / peer_row[1]:.2f}x")
    print(f"ours (Prefer: wait) vs peer: throughput {waited[0] / peer_row[0]:.2f}x, p50 {waited[1] / peer_row[1]:.2f}x")
    print(f"ours (Prefer: wait) with an API key: throughput {keyed[0] / waited[0]:.2f}x of without, router CPU "
          f"{keyed_cpu:.2f} ms vs {router_cpu:.2f} ms per job")
    print(f"unloaded p50 (one job at a time, {args.sequential} jobs a pass, median of {len(passes)} passes): ours with "
          f"Prefer: wait {u_wait * 1e3:.1f} ms, with polling {u_poll * 1e3:.1f} ms, plain Serve {u_plain * 1e3:.1f} ms")
    # The verdicts use each round's own ratios (ours and the peer a minute apart, under the same
    # machine), their median over the rounds: on a shared 2-core box the whole machine drifts by a
    # fifth between rounds, which a ratio of two rounds' best figures would count as ours or theirs.
    W, P, POLL = "ours (Prefer: wait=10)", "peer: Serve task_consumer + Celery", "ours (poll)"
    per_round = {
        "wait_tput": [rd[W][0][0] / rd[P][0][0] for rd in rounds],
        "wait_p50": [rd[W][0][1] / rd[P][0][1] for rd in rounds],
        "poll_tput": [rd[POLL][0][0] / rd[P][0][0] for rd in rounds],
        "router_cpu": [router_ms(rd[W][1]) for rd in rounds],
        "auth_cpu": [router_ms(rd[KEYED][1]) / router_ms(rd[W][1]) for rd in rounds],
        "unloaded": [p[W] / p["plain Serve no-op (1 request)"] for p in passes],
    }
    ingress = [router_ms(rd[W][1]) / rd[P][1].get("peer:PeerIngress", float("nan")) for rd in rounds]
    print("per round: " + "; ".join(f"{k} " + " ".join(f"{x:.2f}" for x in v) for k, v in per_round.items())
          + "; router CPU / the peer's ingress CPU " + " ".join(f"{x:.2f}" for x in ingress))
    got = {k: statistics.median(v) for k, v in per_round.items()}
    print(f"\nverdicts: the median over {args.rounds} rounds of each round's own figure (unloaded: of each pass's)")
    for key, (what, bar, goal, higher) in TARGETS.items():
        ok = (lambda x, t: x >= t) if higher else (lambda x, t: x <= t)
        sign = ">=" if higher else "<="
        unit = " ms" if key == "router_cpu" else "x"
        print(f"{verdict(ok(got[key], bar))} first bar / {verdict(ok(got[key], goal))} goal  {what}: "
              f"{got[key]:.2f}{unit} (first bar {sign} {bar:g}{unit}, goal {sign} {goal:g}{unit})")


if __name__ == "__main__":
    main()
