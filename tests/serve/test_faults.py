"""Crashes and concurrency: router replicas killed, model replicas killed, two routers on one queue."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from gpu_orchestrator.bus.events import EventBus

from tests.helpers import ray_log_lines, read_sse, wait_for, wait_status
from tests.ray_session import wait_healthy
from .test_job_path import submit

pytestmark = pytest.mark.serve

TERMINAL = {"succeeded", "failed", "cancelled"}


def replica_pids(deployment: str) -> list[int]:
    # From the GCS actor table (the state API needs the dashboard, which the tests do not start).
    import ray._private.state as state

    cls = f"ServeReplica:orchestrator:{deployment}"
    return [a["Pid"] for a in state.actors().values() if a["ActorClassName"] == cls and a["State"] == "ALIVE"]


def kill_replicas(deployment: str) -> int:
    pids = replica_pids(deployment)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return len(pids)


def wait_replicas_running(http: httpx.Client, deployment: str, n: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            models = {m["deployment"]: m for m in http.get("/v1/workers").json()["models"]}
            if models[deployment]["replica_states"].get("RUNNING") == n and len(replica_pids(deployment)) == n:
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{deployment} did not get back to {n} running replicas")


def status_events(serve_backend, job_id: str) -> list[dict]:
    bus = EventBus(serve_backend.redis_url)
    try:
        return [e.data for e in bus.read(job_id) if e.type == "status"]
    finally:
        bus.close()


def test_two_router_replicas_never_dispatch_a_job_twice(http, serve_backend):
    ids = [submit(http, steps=2, message=f"j{i}") for i in range(40)]
    owners = set()
    for job_id in ids:
        job = wait_status(http, job_id, TERMINAL)
        assert job["status"] == "succeeded" and job["attempts"] == 1
        # Events follow the commit (the row may say succeeded a moment before its event is out).
        dropped = False
        try:
            statuses = wait_for(lambda: (ev := status_events(serve_backend, job_id))[-1:] and ev[-1]["status"] in TERMINAL
                                and ev, f"job {job_id}'s terminal status event", 30)
        except AssertionError:
            # Status events are lossy by design (a publish slower than redis_timeout_s is dropped, logged,
            # and watchers read the row): a missing one is accepted only where its router said so.
            logged = ray_log_lines(job_id)
            if "not published" not in logged:
                raise AssertionError(f"job {job_id}: no terminal status event, none said dropped{logged}") from None
            statuses, dropped = status_events(serve_backend, job_id), True
        running = [s for s in statuses if s["status"] == "running"]
        assert len(running) == 1 or (dropped and not running), statuses  # never dispatched twice
        owners.update(s["router"] for s in running)
        assert [s["status"] for s in statuses if s["status"] in TERMINAL] in (["succeeded"], [] if dropped else ["succeeded"])
    assert len(owners) == 2, f"expected both router replicas to claim work, got {owners}"


def test_killing_router_replicas_loses_no_job_and_overwrites_no_result(orchestrator, http, serve_backend):
    quick = [submit(http, message=f"q{i}") for i in range(4)]
    # Slow enough to be running still once the quick ones are done and each is seen running, on a loaded box.
    slow = [submit(http, delay_s=8, steps=4, message=f"s{i}") for i in range(6)]
    backlog = [submit(http, app_id="echo-tiny", delay_s=1, steps=2) for _ in range(2)]  # 1 running, 1 queued
    before = {j: wait_status(http, j, {"succeeded"}) for j in quick}
    for j in slow:
        wait_status(http, j, {"running"})
    assert kill_replicas("router") == 2
    wait_healthy(orchestrator, timeout_s=90)
    with httpx.Client(base_url=orchestrator, timeout=30) as h:
        final = {j: wait_status(h, j, TERMINAL, timeout_s=90) for j in quick + slow + backlog}
    for j, job in before.items():
        assert final[j] == job, "a recorded result changed after the router restart"
    for j in slow + backlog:
        assert final[j]["status"] == "succeeded", final[j]
    # The slow jobs were running when their router died: rescued after the lease and sent again,
    # without using an attempt (a dead router is not the job's fault); the echo replica that still
    # ran them hands over the run (or its result) instead of starting it again.
    assert all(final[j]["attempts"] == 1 and final[j]["lost_attempts"] == 1 for j in slow), [final[j] for j in slow]
    for j in quick + slow + backlog:
        terminal = [s["status"] for s in status_events(serve_backend, j) if s["status"] in TERMINAL]
        assert terminal == ["succeeded"], (j, terminal)


def test_killing_a_model_replica_mid_job_retries_or_fails(orchestrator, http):
    retried = submit(http, delay_s=6, steps=6)
    once = submit(http, app_id="echo-once", delay_s=6, steps=6)
    for j in (retried, once):  # both mid-job on the model replicas: each has done a step
        read_sse(orchestrator, j, until=lambda e: e["event"] == "progress")
    assert kill_replicas("echo") == 2
    failed = wait_status(http, once, TERMINAL, timeout_s=60)
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert "died" in failed["error"].lower() or "actor" in failed["error"].lower(), failed["error"]
    ok = wait_status(http, retried, TERMINAL, timeout_s=120)
    assert ok["status"] == "succeeded" and ok["attempts"] == 2 and ok["result"]["attempt"] == 2
    wait_replicas_running(http, "echo", 2)
