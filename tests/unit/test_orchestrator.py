"""The composition root on its in-memory build (root/memory.py): the HTTP API and the handle
methods, in process, with no Postgres, Redis or Ray: a job runs on a real model object (the echo
model through InProcessBackend), keys are checked and revoked at once, and shutdown hands back
what it holds."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from gpu_orchestrator.core.keys import Quota, Scope
from gpu_orchestrator.models.echo import Echo
from gpu_orchestrator.root.memory import in_memory
from gpu_orchestrator.service.backends import InProcessBackend

CONFIG = {
    "apps": [{"id": "echo", "deployment": "echo", "timeout_s": 30,
              "parameters": [{"name": "message", "type": "string", "default": "hi"}]}],
    "models": {"echo": {"impl": "deployments.echo:Echo"}},
    "router": {"lease_s": 5, "poll_interval_s": 0.05},
}


def run(fn: Any, **router: Any) -> Any:
    async def go() -> Any:
        orch = in_memory({**CONFIG, "router": {**CONFIG["router"], **router}}, {"echo": InProcessBackend(Echo())})
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=orch.asgi()), base_url="http://t") as c:
                return await fn(orch, c)
        finally:
            await orch.aclose()
    return asyncio.run(go())


def test_a_job_runs_on_the_model_and_the_answer_carries_its_result():
    async def go(orch, c):
        r = await c.post("/v1/jobs", json={"app_id": "echo", "params": {"message": "m1"}}, headers={"Prefer": "wait=10"})
        assert r.status_code in (200, 202), r.text
        job = r.json()
        assert job["status"] == "succeeded" and job["result"]["echo"]["message"] == "m1" and job["attempts"] == 1
        got = await c.get(f"/v1/jobs/{job['job_id']}")
        assert got.json()["status"] == "succeeded"
        # the handle methods, beside the HTTP API
        handle = await orch.submit("echo", {"message": "m2"})
        done = await orch.wait(handle["job_id"], timeout_s=10)
        assert done["status"] == "succeeded" and done["result"]["echo"]["message"] == "m2"
        stats = (await c.get("/v1/stats")).json()
        assert set(stats["apps"]) <= {"echo"} and "jobs_per_minute" in stats
        workers = (await c.get("/v1/workers")).json()
        assert [m["deployment"] for m in workers["models"]] == ["echo"]
        return orch.metrics.counts
    counts = run(go)
    assert counts[("echo", "succeeded", False)] == 2


def test_keys_are_required_checked_and_revoked_at_once():
    async def go(orch, c):
        assert (await c.post("/v1/jobs", json={"app_id": "echo"})).status_code == 401
        _, admin = await orch.auth.create_key(name="admin", scopes=[Scope.admin], apps=None, quota=Quota())
        r = await c.post("/v1/admin/keys", json={"name": "alice", "scopes": ["submit", "read"]},
                         headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 201, r.text
        alice = {"Authorization": f"Bearer {r.json()['token']}"}
        ok = await c.post("/v1/jobs", json={"app_id": "echo"}, headers={**alice, "Prefer": "wait=10"})
        assert ok.json()["status"] == "succeeded"
        assert (await c.delete("/v1/admin/keys/alice", headers={"Authorization": f"Bearer {admin}"})).status_code == 200
        assert (await c.get(f"/v1/jobs/{ok.json()['job_id']}", headers=alice)).status_code == 401
    run(go, auth="on")


def test_serves_graceful_stop_of_a_router_replica_is_the_orchestrators_aclose():
    """Serve stops a replica by calling `__del__` on its loop and awaiting what it returns: the
    router answers with the orchestrator's shutdown once, and with nothing outside a loop (garbage
    collection) or a second time."""
    from gpu_orchestrator.serve.router import Router

    closed = []

    class Orch:
        async def aclose(self) -> None:
            closed.append(True)

    router = object.__new__(Router)
    router.__dict__["orch"] = Orch()
    assert router.__del__() is None  # no running loop: nothing to hand back

    async def stop() -> None:
        first = router.__del__()
        assert asyncio.iscoroutine(first) and router.__del__() is None
        await first
    asyncio.run(stop())
    assert closed == [True]
