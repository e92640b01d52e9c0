"""The GPU arbiter on real Ray Serve with a fake GPU: three synthetic models (16/14/12 GB, 0.6 GPU
share each) on one 24 GB GPU, so no two can be resident together."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from .conftest import wait_status

pytestmark = pytest.mark.serve
MODELS = ("echo-a", "echo-b", "echo-c")


def replica_states() -> dict[str, dict[str, int]]:
    from ray import serve

    app = serve.status().applications["arbiter"]
    return {n: {str(getattr(k, "value", k)): v for k, v in d.replica_states.items()} for n, d in app.deployments.items()}


def holding(states: dict[str, int]) -> int:
    return sum(v for k, v in states.items() if k in ("RUNNING", "STARTING", "UPDATING", "STOPPING", "RECOVERING"))


class Sampler:
    """Polls serve.status() in the background and records which models held replicas together."""

    def __init__(self):
        self.stop = threading.Event()
        self.overlaps: list[dict] = []
        self.samples = 0
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            st = replica_states()
            held = {m: holding(st.get(m, {})) for m in MODELS}
            if sum(1 for v in held.values() if v) > 1:
                self.overlaps.append(st)
            self.samples += 1
            time.sleep(0.05)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join()


@pytest.fixture
def arb(arbiter_url):
    with httpx.Client(base_url=arbiter_url, timeout=30) as c:
        yield c


def submit(c, app, priority=0, **params):
    r = c.post("/v1/jobs", json={"app_id": app, "params": params, "priority": priority})
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def wait_all_cold(c, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = replica_states()
        if all(holding(st.get(m, {})) == 0 for m in MODELS):
            return
        time.sleep(0.2)
    raise TimeoutError(f"models still hold replicas: {replica_states()}")


def loads(c) -> dict[str, int]:
    models = {m["deployment"]: m for m in c.get("/v1/workers").json()["models"]}
    return {m: models[m]["arbiter"]["loads"] for m in MODELS}


def test_cold_model_scales_from_zero_and_completes(arb):
    wait_all_cold(arb)
    assert holding(replica_states()["echo-a"]) == 0
    t0 = time.monotonic()
    job = wait_status(arb, submit(arb, "a", steps=2), {"succeeded", "failed"}, timeout_s=60)
    took = time.monotonic() - t0
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert replica_states()["echo-a"].get("RUNNING") == 1
    w = {m["deployment"]: m for m in arb.get("/v1/workers").json()["models"]}["echo-a"]
    assert w["state"] == "resident" and w["arbiter"]["last_decision"].startswith("load echo-a on gpu0")
    print(f"cold start to done: {took:.1f} s (1 s simulated load)")


def test_models_that_do_not_fit_swap_and_are_never_resident_together(arb):
    with Sampler() as s:
        ids = [submit(arb, app, delay_s=0.5) for app in ("a", "b", "c", "b")]
        jobs = [wait_status(arb, j, {"succeeded", "failed"}, timeout_s=120) for j in ids]
    assert all(j["status"] == "succeeded" for j in jobs), jobs
    assert s.samples > 20 and s.overlaps == [], s.overlaps[:3]


def test_a_model_with_a_running_job_is_not_evicted(arb):
    long_job = submit(arb, "a", delay_s=6, steps=6)
    wait_status(arb, long_job, {"running"}, timeout_s=60)
    time.sleep(1.0)
    urgent = submit(arb, "b", priority=50)
    time.sleep(2.0)
    w = {m["deployment"]: m for m in arb.get("/v1/workers").json()["models"]}
    assert w["echo-a"]["state"] == "draining", w["echo-a"]
    assert w["echo-a"]["arbiter"]["last_decision"].startswith("drain echo-a (0 queued, 1 running) for echo-b")
    a = wait_status(arb, long_job, {"succeeded", "failed"}, timeout_s=60)
    b = wait_status(arb, urgent, {"succeeded", "failed"}, timeout_s=60)
    assert a["status"] == "succeeded" and a["attempts"] == 1  # finished on its replica, not killed
    assert b["status"] == "succeeded" and b["started_at"] > a["finished_at"]


def test_abaac_loads_each_model_once(arb):
    wait_all_cold(arb)
    before = loads(arb)
    ids = [submit(arb, app, delay_s=0.3) for app in "abaac"]
    jobs = [wait_status(arb, j, {"succeeded", "failed"}, timeout_s=120) for j in ids]
    assert all(j["status"] == "succeeded" for j in jobs)
    after = loads(arb)
    assert {m: after[m] - before[m] for m in MODELS} == {"echo-a": 1, "echo-b": 1, "echo-c": 1}
    order = [j["app_id"] for j in sorted(jobs, key=lambda j: j["started_at"])]
    assert order == ["a", "a", "a", "b", "c"]  # the A's ran as one batch


def test_idle_models_scale_to_zero_after_the_ttl(arb):
    wait_status(arb, submit(arb, "c"), {"succeeded"}, timeout_s=60)
    assert replica_states()["echo-c"].get("RUNNING") == 1
    wait_all_cold(arb, timeout_s=30)  # idle_ttl_s is 6
    w = {m["deployment"]: m for m in arb.get("/v1/workers").json()["models"]}["echo-c"]
    assert w["state"] == "cold" and w["replica_states"].get("RUNNING", 0) == 0
    assert w["arbiter"]["last_decision"].startswith("scale echo-c to zero: idle")
    arbiter = arb.get("/v1/workers").json()["arbiter"]
    assert arbiter["targets"] == {"echo-a": 0, "echo-b": 0, "echo-c": 0, "echo-huge": 0}


def test_two_gpu_nodes_fit_and_pinning(serve_backend):
    """Two fake GPU nodes (24 GB 'small', 80 GB 'big'), run in a subprocess with its own cluster."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    db = serve_backend.fresh_database()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "tests.serve.two_node_scenario", serve_backend.url_for(db), serve_backend.redis_url],
            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=400,
        )
    finally:
        serve_backend.drop(db)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, f"scenario failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out = json.loads(line[len("RESULT "):])
    assert out["status"] == {"llm40": "succeeded", "whisper": "succeeded", "tiny": "succeeded"}
    assert out["nodes"]["llm40"] == ["big"]  # 40 GB fits only on the 80 GB node
    assert out["nodes"]["whisper-pinned"] == ["small"]  # pinned to its node type
    assert out["pools"]["llm40"] == ["big"] and out["pools"]["whisper-pinned"] == ["small"]


def test_cli_workers_shows_arbiter_state(arbiter_url):
    from click.testing import CliRunner

    from gpu_orchestrator.cli import cli

    r = CliRunner().invoke(cli, ["--url", arbiter_url, "workers"])
    assert r.exit_code == 0, r.output
    assert "echo-a [SYNTHETIC]: " in r.stdout and "VRAM -/16 GB" in r.stdout
    assert "last decision: " in r.stdout and "arbiter: leader router:" in r.stdout


def test_jobs_no_gpu_can_hold_fail_with_the_reason_after_max_wait(arb):
    t0 = time.monotonic()
    job = submit(arb, "huge")
    time.sleep(2.0)
    reasons = arb.get("/v1/workers").json()["arbiter"]["reasons"]
    assert "cannot place echo-huge: needs 30 GB, largest allowed GPU has 24 GB" in reasons
    done = wait_status(arb, job, {"succeeded", "failed"}, timeout_s=120)
    assert done["status"] == "failed" and done["attempts"] == 0
    assert done["error"] == "no capacity: cannot place echo-huge: needs 30 GB, largest allowed GPU has 24 GB"
    assert time.monotonic() - t0 >= 28  # it had max_wait_s (30 s) to find room first
    w = {m["deployment"]: m for m in arb.get("/v1/workers").json()["models"]}
    assert w["echo-huge"]["replica_states"] in ({}, {"RUNNING": 0}) and w["echo-huge"]["queued"] == 0
