"""The HTTP API from create_app over httpx.ASGITransport, on the in-memory store and event bus: the
body limit comes from create_app's arguments; domain errors map to their status codes, bodies and
headers; outages answer 503 (database) or nothing at all (Redis, after a committed transition)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import httpx
import pytest

from gpu_orchestrator.api.app import create_app
from gpu_orchestrator.api.limits import Limits
from gpu_orchestrator.bus.memory import MemoryEventBus
from gpu_orchestrator.core.config import parse_config
from gpu_orchestrator.service.fleet import Fleet
from gpu_orchestrator.service.reports import Reports
from gpu_orchestrator.service.jobs import JobService
from gpu_orchestrator.service.transitions import CountingMetrics, Transitions
from gpu_orchestrator.store.memory import MemoryJobStore

CONFIG = {
    "apps": [
        {"id": "echo", "deployment": "echo", "parameters": [{"name": "message", "type": "string", "default": "hi"}]},
        {"id": "small", "deployment": "echo", "max_queued": 1, "parameters": []},
        {"id": "chat", "deployment": "llm", "task": "chat",
         "parameters": [{"name": "messages", "type": "messages", "required": True}]},
    ],
    "models": {"echo": {"impl": "deployments.echo:Echo"}, "llm": {"impl": "deployments.llm:LLM", "vram_gb": 22}},
}


class Api:
    def __init__(self, **limits: Any):
        self.store = MemoryJobStore()
        self.bus = MemoryEventBus()
        self.metrics = CountingMetrics()
        cfg = parse_config(CONFIG)
        self.jobs = JobService(cfg=cfg, store=self.store, events=self.bus,
                               transitions=Transitions(self.bus, self.metrics, timeout_s=0.5),
                               deployed={"echo", "llm"}, flag_timeout_s=0.5)

        async def no_beats() -> list[dict[str, Any]]:
            return []

        self.app = create_app(jobs=self.jobs, fleet=Fleet(cfg, self.store, heartbeats=no_beats),
                              reports=Reports(self.store, cfg.costs),
                              limits=Limits(**{"max_body_bytes": 1024, "max_upload_bytes": 4096, **limits}))

    def run(self, fn: Any) -> Any:
        async def go() -> Any:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t") as c:
                return await fn(c)

        return asyncio.run(go())


def fields(r: httpx.Response) -> set[str]:
    return {f["field"] for f in r.json().get("fields", [])}


# -- body limit ------------------------------------------------------------------------------------

async def _chunks(first: bytes, n: int) -> AsyncIterator[bytes]:
    yield first
    for _ in range(n // 256):
        yield b"x" * 256


@pytest.mark.parametrize("path,limit,ctype,first", [
    ("/v1/jobs", 1024, "application/json", b'{"app_id": "echo", "params": {"message": "'),
    ("/v1/artifacts", 4096, "multipart/form-data; boundary=b",
     b'--b\r\nContent-Disposition: form-data; name="file"; filename="f.wav"\r\n\r\n'),
    ("/v1/jobs/multipart", 4096, "multipart/form-data; boundary=b",
     b'--b\r\nContent-Disposition: form-data; name="file"; filename="f.wav"\r\n\r\n'),
])
def test_bodies_over_the_limits_from_create_app_are_413(path, limit, ctype, first):
    api = Api()

    async def go(c: httpx.AsyncClient) -> list[httpx.Response]:
        chunked = await c.post(path, content=_chunks(first, limit * 4), headers={"content-type": ctype})
        declared = await c.post(path, content=b"x" * (limit + 1), headers={"content-type": ctype})
        return [chunked, declared]

    for r in api.run(go):
        assert r.status_code == 413 and r.json()["error"] == "body_too_large", r.text
        assert f"limit of {limit} bytes" in r.json()["message"]
    assert api.store.list()[0] == []


def test_stats_show_each_apps_queue_and_jobs_per_minute():
    api = Api()

    async def go(c: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        for _ in range(2):
            assert (await c.post("/v1/jobs", json={"app_id": "echo"})).status_code == 202
        # One sent to a cloud backend (routed so at submit): counted apart from the local queue.
        api.store.submit(app_id="echo", params={}, max_attempts=1, timeout_s=60, route="replicate", route_reason="busy")
        return await c.get("/v1/stats", params={"minutes": 5}), await c.get("/v1/stats", params={"minutes": 0})

    ok, bad = api.run(go)
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["apps"]["echo"]["queued"] == 2 and body["apps"]["echo"]["oldest_queued_age_s"] >= 0
    assert body["apps"]["echo"]["cloud"]["queued"] == 1 and body["apps"]["echo"]["cloud"]["running"] == 0
    assert [(b["status"], b["count"]) for b in body["jobs_per_minute"]] == [("queued", 3)]
    assert bad.status_code == 422 and "minutes" in bad.text


def test_limits_are_read_per_request():
    api = Api()
    body = {"app_id": "echo", "params": {"message": "x" * 900}}

    async def go(c: httpx.AsyncClient) -> tuple[int, int]:
        ok = (await c.post("/v1/jobs", json=body)).status_code
        api.app.state.limits.max_body_bytes = 512
        return ok, (await c.post("/v1/jobs", json=body)).status_code

    assert api.run(go) == (202, 413)


# -- domain errors -> HTTP -------------------------------------------------------------------------

def test_refusals_map_to_4xx_naming_the_field():
    api = Api()

    async def go(c: httpx.AsyncClient) -> dict[str, httpx.Response]:
        ok = await c.post("/v1/jobs", json={"app_id": "echo"}, headers={"Idempotency-Key": "k1"})
        job_id = ok.json()["job_id"]
        return {
            "ok": ok,
            "unknown": await c.post("/v1/jobs", json={"app_id": "nope"}),
            "priority": await c.post("/v1/jobs", json={"app_id": "echo", "priority": 101}),
            "params": await c.post("/v1/jobs", json={"app_id": "echo", "params": {"message": 5, "x": 1}}),
            "json": await c.post("/v1/jobs", content=b"{nope", headers={"content-type": "application/json"}),
            "key": await c.post("/v1/jobs", json={"app_id": "echo"}, headers={"Idempotency-Key": "caf\xe9".encode("latin-1")}),
            "conflict": await c.post("/v1/jobs", json={"app_id": "echo", "params": {"message": "b"}},
                                     headers={"Idempotency-Key": "k1"}),
            "missing": await c.get("/v1/jobs/00000000-0000-0000-0000-000000000000"),
            "bad_id": await c.get("/v1/jobs/nope"),
            "cancel": await c.delete(f"/v1/jobs/{job_id}"),
            "cancel_again": await c.delete(f"/v1/jobs/{job_id}"),
            "event_id": await c.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "x"}),
            "cursor": await c.get("/v1/jobs", params={"cursor": "nope"}),
            "model": await c.post("/v1/chat/completions", json={"model": "echo", "messages": []}),
        }

    r = api.run(go)
    assert r["ok"].status_code == 202
    u = r["unknown"]
    assert u.status_code == 422 and u.json()["error"] == "unknown_app" and fields(u) == {"app_id"}
    assert u.json()["message"].startswith("app_id: unknown app 'nope'")
    assert r["priority"].status_code == 422 and fields(r["priority"]) == {"priority"}
    assert r["params"].status_code == 422 and r["params"].json()["error"] == "invalid_params"
    assert r["json"].status_code == 400 and r["json"].json()["error"] == "malformed_json"
    assert r["key"].status_code == 422 and fields(r["key"]) == {"Idempotency-Key"}
    assert r["conflict"].status_code == 409 and r["conflict"].json()["error"] == "idempotency_conflict"
    assert fields(r["conflict"]) == {"Idempotency-Key"}
    assert r["missing"].status_code == 404 and r["missing"].json()["error"] == "job_not_found"
    assert fields(r["missing"]) == {"job_id"}
    assert r["bad_id"].status_code == 422 and fields(r["bad_id"]) == {"job_id"}
    assert r["cancel"].status_code == 200 and r["cancel"].json()["status"] == "cancelled"
    assert r["cancel_again"].status_code == 409 and r["cancel_again"].json() == {
        "error": "invalid_state", "message": r["cancel_again"].json()["message"]}
    assert r["event_id"].status_code == 422 and fields(r["event_id"]) == {"Last-Event-ID"}
    assert r["cursor"].status_code == 422 and fields(r["cursor"]) == {"cursor"}
    # The OpenAI route answers in OpenAI's shape (api/openai_errors.py).
    assert r["model"].status_code == 404 and r["model"].json()["error"]["code"] == "model_not_found"
    assert r["model"].json()["error"]["param"] == "model"


def test_a_full_queue_is_429_with_retry_after():
    api = Api()

    async def go(c: httpx.AsyncClient) -> list[httpx.Response]:
        return [await c.post("/v1/jobs", json={"app_id": "small"}) for _ in range(2)]

    first, second = api.run(go)
    assert first.status_code == 202
    assert second.status_code == 429 and second.json()["error"] == "queue_full"
    assert int(second.headers["retry-after"]) >= 1


def test_a_database_outage_is_503_with_retry_after():
    api = Api()
    api.store.available = False

    async def go(c: httpx.AsyncClient) -> list[httpx.Response]:
        return [await c.post("/v1/jobs", json={"app_id": "echo"}), await c.get("/v1/jobs"),
                await c.get("/v1/jobs/00000000-0000-0000-0000-000000000000"), await c.get("/healthz")]

    *calls, health = api.run(go)
    for r in calls:
        assert r.status_code == 503, r.text
        assert r.json() == {"error": "service_unavailable", "message": "database unavailable, retry"}
        assert r.headers["retry-after"] == "5"
    assert health.status_code == 503 and health.json()["database"] == "down" and health.json()["redis"] == "ok"


def test_a_redis_outage_never_fails_a_committed_submit_or_cancel():
    api = Api()

    async def go(c: httpx.AsyncClient) -> tuple[httpx.Response, ...]:
        with api.bus.outage():
            sub = await c.post("/v1/jobs", json={"app_id": "echo"})
            api.store.claim(app_id="echo", owner="r1", limit=1, lease_s=30, max_in_flight=10)
            can = await c.delete(f"/v1/jobs/{sub.json()['job_id']}")  # running: the cancel flag fails too
            health = await c.get("/healthz")
        return sub, can, health

    sub, can, health = api.run(go)
    assert sub.status_code == 202 and can.status_code == 200 and can.json()["status"] == "cancelled"
    assert health.status_code == 200 and health.json()["status"] == "degraded" and health.json()["redis"] == "down"
    assert api.metrics.total() == 2 and api.bus.published == []


def test_events_end_with_the_status_from_the_row_and_streams_are_bounded():
    api = Api(max_streams=1)

    async def go(c: httpx.AsyncClient) -> tuple[str, httpx.Response]:
        job_id = (await c.post("/v1/jobs", json={"app_id": "echo"})).json()["job_id"]
        (job,) = api.store.claim(app_id="echo", owner="r1", limit=1, lease_s=30, max_in_flight=10)
        api.store.complete(job_id=job.id, owner="r1", attempt=job.claims, result={"ok": 1}, backend="echo")
        body = (await c.get(f"/v1/jobs/{job_id}/events")).text
        api.app.state.streams.open = 1  # another stream is open on this replica
        return body, await c.get(f"/v1/jobs/{job_id}/events")

    body, refused = api.run(go)
    assert body.count("event: status") == 2 and '"source": "database"' in body and '"succeeded"' in body
    assert refused.status_code == 503 and refused.json()["error"] == "too_many_streams"
    assert refused.headers["retry-after"] == "5"


def test_apps_workers_and_seed_aliases():
    api = Api()

    async def go(c: httpx.AsyncClient) -> list[httpx.Response]:
        sub = await c.post("/submit", json={"app_id": "echo"})
        return [sub, await c.get(f"/status/{sub.json()['job_id']}"), await c.get("/v1/apps"),
                await c.get("/v1/workers"), await c.get("/workers"), await c.get("/v1/models")]

    sub, status, apps, workers, seed_workers, models = api.run(go)
    assert sub.status_code == 202 and set(sub.json()) == {"job_id", "status"}
    assert status.json()["status"] == "queued"
    assert [a["id"] for a in apps.json()["apps"]] == ["echo", "small", "chat"]
    # VRAM is declared on the model; each app shows its model's.
    assert {a["id"]: a["vram_gb"] for a in apps.json()["apps"]} == {"echo": 0.0, "small": 0.0, "chat": 22.0}
    w = {m["deployment"]: m for m in workers.json()["models"]}
    assert w["echo"]["queued"] == 1 and w["echo"]["state"] == "cold" and "arbiter" not in workers.json()
    assert seed_workers.json() == {"count": 0, "workers": []}
    assert [m["id"] for m in models.json()["data"]] == ["chat"]
