"""Fault run: a stream of echo jobs through the stack while Redis, Postgres, the router or the model
replica is killed (SIGKILL) and brought back. Prints, per fault: accepted, succeeded, failed, lost,
ran more than once, and whether every SSE client saw its job's terminal status.

    python bench/faults.py [--jobs 60] [--faults redis,postgres,router,model]

It starts its own stack the way a user does (`gpu-orch up` on the embedded default, in a temporary
GPU_ORCH_HOME, with an echo-only config so no model runtime_env is built) and stops it afterwards.
The scenario functions are shared with tests/serve/test_outages.py.

"Ran more than once" counts jobs that a model replica started more than once, read from the run
log the echo model appends to (`run_log` init arg): the GPU work a real model would have repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpu_orchestrator.client import TERMINAL  # noqa: E402
from gpu_orchestrator.ops.stack import free_port  # noqa: E402


# -- faults -----------------------------------------------------------------------------------------


def _pid_of(pidfile: Path) -> int:
    return int(pidfile.read_text().splitlines()[0].strip())


def kill_redis(redis_dir: Path, down_s: float = 3.0) -> None:
    from gpu_orchestrator.ops import embedded

    os.kill(_pid_of(redis_dir / "redis.pid"), signal.SIGKILL)
    time.sleep(down_s)
    embedded.start_redis(redis_dir)


def kill_postgres(pg_dir: Path, down_s: float = 5.0) -> None:
    from gpu_orchestrator.ops import embedded

    pid = _pid_of(pg_dir / "postmaster.pid")
    os.kill(pid, signal.SIGKILL)
    # Backends exit when they notice the postmaster is gone; the restart waits for them.
    time.sleep(down_s)
    embedded.start_postgres(pg_dir)


def replica_pids(app: str, deployment: str) -> list[int]:
    """Serve replicas are Ray workers whose process title names them: `ray::ServeReplica:APP:DEP`, with
    the method it runs appended while busy (`...:router.handle_request`)."""
    out = subprocess.run(["pgrep", "-f", f"^ray::ServeReplica:{app}:{deployment}([.]| |$)"],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def kill_replicas(app: str, deployment: str) -> int:
    pids = replica_pids(app, deployment)
    if not pids:
        raise RuntimeError(f"no running replica of {app}:{deployment} to kill")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return len(pids)


# -- the scenario -------------------------------------------------------------------------------------


@dataclass
class Report:
    fault: str
    accepted: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    reran: int = 0
    resent: int = 0  # jobs handed to a model more than once (a lost or failed attempt in their history)
    sse_clients: int = 0
    sse_terminal: int = 0  # SSE clients that saw their job's terminal status
    sse_multi_terminal: int = 0  # streams that carried more than one terminal status
    errors: list[str] = field(default_factory=list)
    jobs: dict[str, dict] = field(default_factory=dict)

    def row(self) -> str:
        return (f"| {self.fault} | {self.accepted} | {self.succeeded} | {self.failed} | {self.lost} | {self.resent} | {self.reran} "
                f"| {self.sse_terminal}/{self.sse_clients} |")


def _submit(c: httpx.Client, i: int, run_id: str, delay_s: float, deadline: float) -> str | None:
    """Submit one job, retrying (same Idempotency-Key) through outages, as a careful client does."""
    body = {"app_id": "echo", "params": {"message": f"{run_id}-{i}", "delay_s": delay_s, "steps": 3}}
    while time.monotonic() < deadline:
        try:
            r = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": f"{run_id}-{i}"})
            if r.status_code in (200, 202):
                return r.json()["job_id"]
            if r.status_code < 500 and r.status_code != 429:
                raise RuntimeError(f"submit {i}: {r.status_code} {r.text}")
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    return None


def _follow_sse(base: str, job_id: str, deadline: float, out: list[int]) -> None:
    """Read the job's SSE stream to its terminal status, reconnecting with Last-Event-ID like a browser."""
    last, terminals = None, 0
    while time.monotonic() < deadline and not terminals:
        headers = {"Last-Event-ID": last} if last else {}
        try:
            with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events", headers=headers, timeout=30) as r:
                if r.status_code != 200:
                    time.sleep(0.5)
                    continue
                event = None
                for line in r.iter_lines():
                    if line.startswith("id: ") and line[4:] not in ("0",):
                        last = line[4:]
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "status":
                        if json.loads(line[6:]).get("status") in TERMINAL:
                            terminals += 1
        except httpx.HTTPError:
            time.sleep(0.5)
    out.append(terminals)


def _final(c: httpx.Client, job_id: str, deadline: float) -> dict | None:
    while time.monotonic() < deadline:
        try:
            r = c.get(f"/v1/jobs/{job_id}")
            if r.status_code == 200 and r.json()["status"] in TERMINAL:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return None


def run_scenario(base: str, fault_name: str, fault: Callable[[], None], *, run_log: Path | None = None,
                 n: int = 60, fault_after: int = 20, delay_s: float = 0.3, gap_s: float = 0.05,
                 sse_every: int = 3, timeout_s: float = 240) -> Report:
    """Submit n jobs (gap_s apart); after job `fault_after`, run the fault in a thread while submits go on;
    follow every `sse_every`-th job over SSE; then wait for every accepted job to end."""
    rep = Report(fault_name)
    run_id = f"{fault_name}-{os.getpid()}-{int(time.time() * 1000)}"
    deadline = time.monotonic() + timeout_s
    sse_out: list[int] = []
    threads: list[threading.Thread] = []
    def inject() -> None:
        try:
            fault()
        except Exception as e:  # a fault that could not be injected (or undone) must show in the report
            rep.errors.append(f"fault {fault_name}: {type(e).__name__}: {e}")

    fault_thread = threading.Thread(target=inject, name=f"fault-{fault_name}")
    ids: list[str] = []
    with httpx.Client(base_url=base, timeout=15) as c:
        for i in range(n):
            if i == fault_after:
                fault_thread.start()
            job_id = _submit(c, i, run_id, delay_s, deadline)
            if job_id is None:
                rep.errors.append(f"job {i} never accepted")
                continue
            ids.append(job_id)
            if i % sse_every == 0:
                t = threading.Thread(target=_follow_sse, args=(base, job_id, deadline, sse_out), daemon=True)
                t.start()
                threads.append(t)
            time.sleep(gap_s)
        fault_thread.join()
        rep.accepted = len(set(ids))
        for job_id in ids:
            job = _final(c, job_id, deadline)
            if job is None:
                rep.lost += 1
                continue
            rep.jobs[job_id] = job
            rep.succeeded += job["status"] == "succeeded"
            rep.failed += job["status"] == "failed"
            if job["status"] == "failed":
                rep.errors.append(f"{job_id}: {job['error']}")
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic()))
    rep.sse_clients = len(threads)
    rep.sse_terminal = sum(1 for x in sse_out if x >= 1)
    rep.sse_multi_terminal = sum(1 for x in sse_out if x > 1)
    rep.resent = sum(1 for j in rep.jobs.values() if j.get("errors") or j["attempts"] > 1)
    if run_log is not None and run_log.exists():
        starts = Counter(line.split()[0] for line in run_log.read_text().splitlines() if line.strip())
        rep.reran = sum(1 for j in ids if starts.get(j, 0) > 1)
    else:  # no run log: a job handed out again shows in its attempts
        rep.reran = sum(1 for j in rep.jobs.values() if j["attempts"] > 1)
    return rep


# -- the bench: a stack started as a user starts it ------------------------------------------------------


def echo_only_config(path: Path, port: int, run_log: Path) -> None:
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    app = next(a for a in cfg["applications"] if a["name"] == "orchestrator")
    args = app["args"]
    args["models"] = {"echo": args["models"]["echo"]}
    args["models"]["echo"]["init"]["run_log"] = str(run_log)
    args["apps"] = [a for a in args["apps"] if a["id"] == "echo"]
    args["arbiter"]["enabled"] = False
    app.pop("autoscaling_policy", None)
    path.write_text(yaml.safe_dump(cfg))



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--faults", default="router,model,postgres,redis")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="gpu-orch-faults-"))
    os.chmod(home, 0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "RAY_ADDRESS")}
    env["GPU_ORCH_HOME"] = str(home / "state")
    port = free_port()
    run_log = home / "runs.log"
    config = home / "serve_config.yaml"
    echo_only_config(config, port, run_log)
    gpu_orch = str(Path(sys.executable).parent / "gpu-orch")
    base = f"http://127.0.0.1:{port}"
    up = subprocess.run([gpu_orch, "up", "--config", str(config), "--num-cpus", "4"], env=env, capture_output=True, text=True)
    if up.returncode != 0:
        sys.exit(f"gpu-orch up failed:\n{up.stdout}\n{up.stderr}")
    state = json.loads((home / "state" / "state.json").read_text())
    faults = {
        "router": ("SIGKILL the router replica", lambda: kill_replicas("orchestrator", "router")),
        "model": ("SIGKILL the echo replica", lambda: kill_replicas("orchestrator", "echo")),
        "postgres": ("SIGKILL Postgres, restarted 5 s later", lambda: kill_postgres(Path(state["embedded_postgres"]), 5)),
        "redis": ("SIGKILL Redis, restarted 3 s later", lambda: kill_redis(Path(state["embedded_redis"]), 3)),
    }
    reports = []
    try:
        for name in args.faults.split(","):
            label, fn = faults[name]
            run_log.write_text("")
            rep = run_scenario(base, label, fn, run_log=run_log, n=args.jobs, timeout_s=300)
            reports.append(rep)
            print(rep.row(), flush=True)
            time.sleep(3)  # let replicas come back before the next fault
    finally:
        subprocess.run([gpu_orch, "down"], env=env, capture_output=True, text=True)
    print("\n| fault | accepted | succeeded | failed | lost | sent again | ran more than once | SSE clients saw the end |")
    print("|---|---|---|---|---|---|---|---|")
    for rep in reports:
        print(rep.row())
    ok = all(r.failed == 0 and r.lost == 0 and r.sse_terminal == r.sse_clients and not r.errors for r in reports)
    for rep in reports:
        for e in rep.errors[:5]:
            print(f"  {rep.fault}: {e}")
    print(f"\n{'PASS' if ok else 'MISS'}: 0 failed, 0 lost, every SSE client saw its terminal status")


if __name__ == "__main__":
    main()
