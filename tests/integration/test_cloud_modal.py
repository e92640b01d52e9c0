"""Contract tests of the Modal backend through the router (real Postgres and Redis, over HTTP).
Endpoint mode: a loopback web endpoint that checks Modal's proxy-auth headers. SDK mode: a fake
behind the ModalSdk seam (Modal's client has no offline server), including a Modal that never
answers (its client would retry for ever: our deadlines end the job) and a router killed mid-call
(re-attached by call id, spawned once)."""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import pytest

from gpu_orchestrator.core.config import ModalSpec
from gpu_orchestrator.service.cloud.modal import ModalProvider
from tests.fakes.cloud import FakeModalEndpoint, png_of_size
from tests.helpers import wait_terminal
from tests.integration.router_harness import config, db_url, running_router  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(120)

PARAMS = [{"name": "prompt", "type": "string", "required": True},
          {"name": "width", "type": "integer", "default": 64}, {"name": "height", "type": "integer", "default": 64}]


class FakeSdk:
    """Spawned calls finish after `polls` polls with what `result(params)` gives; `hang`: Modal
    unreachable (every call waits for ever, as its client retries)."""

    def __init__(self) -> None:
        self.spawns: list[tuple[str, dict, dict]] = []
        self.polls: dict[str, int] = {}
        self.cancels: list[str] = []
        self.finish_after = 2
        self.hang = False
        self.fail: str | None = None

    async def _maybe_hang(self) -> None:
        if self.hang:
            await asyncio.Event().wait()

    async def spawn(self, r, params, files):
        await self._maybe_hang()
        call_id = f"fc-{len(self.spawns) + 1}"
        self.spawns.append((call_id, params, files))
        self.polls[call_id] = 0
        return call_id

    async def poll(self, call_id):
        await self._maybe_hang()
        self.polls[call_id] += 1
        if self.polls[call_id] < self.finish_after:
            return False, None
        if self.fail:
            raise RuntimeError(self.fail)
        params = next(p for c, p, _ in self.spawns if c == call_id)
        img = png_of_size(params["width"], params["height"])
        # What deploy/modal/modal_app.py returns: our result shape, files inline.
        return True, {"images": [{"inline": {"name": "image-0.png", "data_b64": base64.b64encode(img).decode()},
                                  "width": params["width"], "height": params["height"]}], "seed": 1}

    async def cancel(self, call_id):
        self.cancels.append(call_id)


def modal_config(endpoint: str | None = None, **target) -> dict:
    cfg = config(retry_backoff_s=0.1)
    t = {"backend": "modal", "gpu": "A10G", "poll_interval_s": 0.05, "call_timeout_s": 2, **target}
    cfg["apps"] += [
        {"id": "sdxl-modal", "kind": "modal", "task": "image", "timeout_s": 20, "max_attempts": 2, "parameters": PARAMS,
         "cloud": {**t, "app": "gpu-orchestrator", "cls": "SDXL", "method": "generate"}},
    ]
    if endpoint:
        cfg["apps"].append({"id": "sdxl-endpoint", "kind": "modal", "task": "image", "timeout_s": 20,
                            "parameters": PARAMS, "cloud": {**t, "endpoint": endpoint}})
    return cfg



def endpoint_router(ep: FakeModalEndpoint, db_url, serve_backend, tmp_path, monkeypatch):
    """A router whose only Modal app is the endpoint `ep`, with its proxy-auth tokens in the env."""
    monkeypatch.setenv("MODAL_PROXY_KEY", ep.key)
    monkeypatch.setenv("MODAL_PROXY_SECRET", ep.secret)
    cfg = modal_config(endpoint=ep.url)
    cfg["apps"] = [a for a in cfg["apps"] if a["id"] != "sdxl-modal"]
    return running_router(db_url, serve_backend.redis_url, artifacts=str(tmp_path / "art"), cfg=cfg)


def test_endpoint_mode_sends_proxy_auth_and_stores_inline_files(db_url, serve_backend, tmp_path, monkeypatch):
    with FakeModalEndpoint() as ep:
        def handler(body):
            p = body["params"]
            img = base64.b64encode(png_of_size(p["width"], p["height"])).decode()
            time.sleep(0.3)  # the GPU's time
            return 200, {"images": [{"inline": {"name": "image-0.png", "data_b64": img}, "width": p["width"],
                                     "height": p["height"]}]}
        ep.handler = handler
        with endpoint_router(ep, db_url, serve_backend, tmp_path, monkeypatch) as rr, \
                httpx.Client(base_url=rr.base, timeout=10) as http:
            r = http.post("/v1/jobs", json={"app_id": "sdxl-endpoint", "params": {"prompt": "x", "width": 96}})
            job = wait_terminal(http, r.json()["job_id"])
            assert job["status"] == "succeeded", job
            img = job["result"]["images"][0]
            assert (img["width"], img["height"]) == (96, 64) and "inline" not in img
            assert http.get(img["url"]).content == png_of_size(96, 64)  # now in our artifact store
            usage = job["cost"]["usage"]
            assert usage["gpu"] == "A10G" and usage["seconds"] >= 0.3
            assert job["cost"]["usd"] == pytest.approx(usage["seconds"] * 0.000306, rel=1e-3)
        req = ep.requests[-1]
        assert req["headers"]["modal-key"] == ep.key and req["headers"]["modal-secret"] == ep.secret


def test_endpoint_without_proxy_tokens_is_unavailable_and_refused(db_url, serve_backend, tmp_path, monkeypatch):
    for var in ("MODAL_PROXY_KEY", "MODAL_PROXY_SECRET"):
        monkeypatch.delenv(var, raising=False)
    cfg = modal_config(endpoint="http://127.0.0.1:9/run")
    cfg["apps"] = [a for a in cfg["apps"] if a["id"] != "sdxl-modal"]
    with running_router(db_url, serve_backend.redis_url, cfg=cfg) as rr, \
            httpx.Client(base_url=rr.base, timeout=10) as http:
        r = http.post("/v1/jobs", json={"app_id": "sdxl-endpoint", "params": {"prompt": "x"}})
        assert r.status_code == 422 and "MODAL_PROXY_KEY" in r.text
        modal = next(c for c in http.get("/v1/workers").json()["cloud"] if c["backend"] == "modal")
        assert modal["available"] is False and "MODAL_PROXY_SECRET" in modal["reason"]


def sdk_router(db_url, serve_backend, tmp_path, monkeypatch, sdk, **target):
    provider = ModalProvider(ModalSpec(), sdk=sdk, modes={"sdk"})
    return running_router(db_url, serve_backend.redis_url, artifacts=str(tmp_path / "art"),
                          cfg=modal_config(**target), cloud_providers={"modal": provider})


def test_sdk_mode_spawns_polls_and_stores_the_result(db_url, serve_backend, tmp_path, monkeypatch):
    sdk = FakeSdk()
    with sdk_router(db_url, serve_backend, tmp_path, monkeypatch, sdk) as rr, httpx.Client(base_url=rr.base, timeout=10) as http:
        job = wait_terminal(http, http.post("/v1/jobs", json={"app_id": "sdxl-modal", "params": {"prompt": "x"}}).json()["job_id"])
    assert job["status"] == "succeeded", job
    assert sdk.spawns[0][1] == {"prompt": "x", "width": 64, "height": 64}  # our own params: it runs our model code
    assert job["backend"] == "modal:gpu-orchestrator/SDXL.generate"
    assert job["result"]["images"][0]["artifact"].startswith("artifact://cloud-sdxl-modal/")


def test_sdk_failure_ends_the_job_with_modals_message(db_url, serve_backend, tmp_path, monkeypatch):
    sdk = FakeSdk()
    sdk.fail = "CUDA error: out of memory"
    with sdk_router(db_url, serve_backend, tmp_path, monkeypatch, sdk) as rr, httpx.Client(base_url=rr.base, timeout=10) as http:
        job = wait_terminal(http, http.post("/v1/jobs", json={"app_id": "sdxl-modal", "params": {"prompt": "x"}}).json()["job_id"])
    assert job["status"] == "failed" and "RuntimeError: CUDA error: out of memory" in job["error"], job
    assert job["attempts"] == 1


def test_unreachable_modal_is_bounded_by_our_deadlines(db_url, serve_backend, tmp_path, monkeypatch):
    sdk = FakeSdk()
    sdk.hang = True  # every call waits for ever, as Modal's client does while its server is away
    with sdk_router(db_url, serve_backend, tmp_path, monkeypatch, sdk, call_timeout_s=0.2) as rr, \
            httpx.Client(base_url=rr.base, timeout=10) as http:
        rr.router.cloud["modal"].BACKOFF_S = (0.05, 0.1)
        job = wait_terminal(http, http.post("/v1/jobs", json={"app_id": "sdxl-modal", "params": {"prompt": "x"}}).json()["job_id"],
                            timeout=40)
    assert job["status"] == "failed", job
    assert job["error"] == "ProviderUnavailable: modal create: no answer from modal within 0.2 s (5 tries)"
    assert [e["kind"] for e in job["errors"]] == ["provider_unavailable"] * 2  # both attempts, then failed


def test_sdk_router_killed_mid_call_reattaches_by_call_id(db_url, serve_backend, tmp_path, monkeypatch):
    sdk = FakeSdk()
    sdk.finish_after = 10**9
    with sdk_router(db_url, serve_backend, tmp_path, monkeypatch, sdk) as a, httpx.Client(base_url=a.base, timeout=10) as http:
        job_id = http.post("/v1/jobs", json={"app_id": "sdxl-modal", "params": {"prompt": "x"}}).json()["job_id"]
        deadline = time.monotonic() + 10
        while not (sdk.spawns and sdk.polls.get("fc-1", 0) >= 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    sdk.finish_after = 0
    with sdk_router(db_url, serve_backend, tmp_path, monkeypatch, sdk) as b, httpx.Client(base_url=b.base, timeout=10) as http:
        b.start_dispatching()
        job = wait_terminal(http, job_id, timeout=40)
    assert job["status"] == "succeeded", job
    assert len(sdk.spawns) == 1 and job["lost_attempts"] == 1



def test_endpoint_5xx_is_retried_as_a_new_attempt(db_url, serve_backend, tmp_path, monkeypatch):
    with FakeModalEndpoint() as ep:
        answers = [(503, {"detail": "overloaded"}), (200, {"text": "ok"})]
        ep.handler = lambda body: answers.pop(0)
        with endpoint_router(ep, db_url, serve_backend, tmp_path, monkeypatch) as rr, \
                httpx.Client(base_url=rr.base, timeout=10) as http:
            job = wait_terminal(http, http.post("/v1/jobs", json={"app_id": "sdxl-endpoint", "params": {"prompt": "x"}}).json()["job_id"])
        assert job["status"] == "succeeded" and job["result"] == {"text": "ok"}, job
        assert [e["kind"] for e in job["errors"]] == ["provider_unavailable"] and len(ep.requests) == 2
