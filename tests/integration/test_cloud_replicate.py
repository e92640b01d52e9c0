"""Contract tests of the Replicate backend: the router (real Postgres and Redis, over HTTP) runs
cloud jobs through the official `replicate` client against a loopback server that implements
Replicate's documented predictions API (tests/fakes/cloud.py). What a user checks: the job's
result and files, its status and error, what it cost, that a cancel reaches Replicate, that a
restarted router does not pay for a prediction twice, and that the token is nowhere."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest
import sqlalchemy as sa
from PIL import Image

from gpu_orchestrator.store.pg_engine import create_engine
from tests.helpers import wait_for, wait_terminal
from tests.fakes.cloud import Behaviour, FakeReplicate, png_of_size
from tests.integration.router_harness import config, db_url, running_router  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(120)

SDXL_VERSION = "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc"
IMAGE_PARAMS = [
    {"name": "prompt", "type": "string", "required": True},
    {"name": "negative_prompt", "type": "string"},
    {"name": "width", "type": "integer", "minimum": 64, "maximum": 2048, "default": 1024},
    {"name": "height", "type": "integer", "minimum": 64, "maximum": 2048, "default": 1024},
    {"name": "num_inference_steps", "type": "integer", "default": 30},
    {"name": "num_images", "type": "integer", "minimum": 1, "maximum": 4, "default": 1},
    {"name": "seed", "type": "integer"},
]


@pytest.fixture
def fake():
    with FakeReplicate() as f:
        yield f


def cloud_config(fake: FakeReplicate, tmp_path, **router) -> dict:
    token = tmp_path / "replicate-token"  # a mounted secret, as in production
    token.write_text(fake.token + "\n")
    cfg = config(retry_backoff_s=0.1, **router)
    cfg["cloud"] = {"replicate": {"base_url": fake.base_url, "token_file": str(token)}}
    target = {"backend": "replicate", "poll_interval_s": 0.05, "call_timeout_s": 3}
    cfg["apps"] += [
        {"id": "sdxl-cloud", "kind": "replicate", "task": "image", "timeout_s": 20, "max_attempts": 2,
         "cloud": {**target, "model": "stability-ai/sdxl"}, "parameters": IMAGE_PARAMS},
        {"id": "zimage-cloud", "kind": "replicate", "task": "image",
         "cloud": {**target, "model": "prunaai/z-image-turbo"}, "parameters": IMAGE_PARAMS},
        {"id": "sdxl-version", "kind": "replicate", "task": "image", "timeout_s": 1, "max_attempts": 2,
         "cloud": {**target, "version": SDXL_VERSION}, "parameters": IMAGE_PARAMS},
        {"id": "whisper-cloud", "kind": "replicate", "task": "transcription",
         "cloud": {**target, "model": "openai/whisper"},
         "parameters": [{"name": "audio", "type": "file", "required": True, "accept": [".wav"]},
                        {"name": "task", "type": "enum", "choices": ["transcribe", "translate"], "default": "transcribe"}]},
    ]
    return cfg


@pytest.fixture
def rr(db_url, serve_backend, tmp_path, monkeypatch, fake):
    with running_router(db_url, serve_backend.redis_url, artifacts=str(tmp_path / "art"),
                        cfg=cloud_config(fake, tmp_path)) as r:
        yield r


def images_of_the_requested_size(inp: dict, fake: FakeReplicate) -> list[str]:
    return [fake.put_file(f"out-{i}.png", png_of_size(inp["width"], inp["height"]), "image/png")
            for i in range(inp.get("num_outputs", 1))]




def test_success_lands_the_output_file_in_our_artifact_store_with_its_cost(rr, fake):
    fake.behaviours["stability-ai/sdxl"] = Behaviour(polls=2, output=images_of_the_requested_size, predict_time=3.2)
    with httpx.Client(base_url=rr.base, timeout=10) as http:
        r = http.post("/v1/jobs", json={"app_id": "sdxl-cloud", "params": {"prompt": "a fox", "width": 128, "height": 64,
                                                                           "num_images": 2}})
        assert r.status_code == 202, r.text
        assert r.json()["route"] == "replicate" and r.json()["route_reason"] == "cloud-only app"
        job = wait_terminal(http, r.json()["job_id"])
        assert job["status"] == "succeeded", job
        # Our params became Replicate's inputs (num_images -> num_outputs), defaults included.
        assert fake.creates[0]["input"] == {"prompt": "a fox", "width": 128, "height": 64, "num_inference_steps": 30,
                                            "num_outputs": 2}
        assert fake.creates[0]["path"] == "/v1/models/stability-ai/sdxl/predictions"
        images = job["result"]["images"]
        assert [(i["width"], i["height"]) for i in images] == [(128, 64), (128, 64)]
        png = http.get(images[0]["url"])  # served by us, not by Replicate
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (128, 64)
        assert images[0]["artifact"].startswith("artifact://cloud-sdxl-cloud/")
        assert job["backend"] == "replicate:stability-ai/sdxl"
        # 3.2 s of predict time on an L40S at $0.000975/s.
        assert job["cost"]["gpu_seconds"] == 3.2 and job["cost"]["usd"] == pytest.approx(0.00312)
        assert job["cost"]["usage"]["metrics"]["predict_time"] == 3.2
        # The events say where it ran and why.
        body = http.get(f"/v1/jobs/{job['job_id']}/events").text
        running = [json.loads(line[6:]) for line in body.splitlines()
                   if line.startswith("data: ") and '"running"' in line]
        assert running and running[0]["backend"] == "replicate" and running[0]["reason"] == "cloud-only app"
        # The cost report counts it as cloud.
        costs = http.get("/v1/costs").json()
        assert costs["total"]["cloud_jobs"] == 1 and costs["total"]["cloud_usd"] == pytest.approx(0.00312)
        assert costs["cloud_share"] == 1.0


def test_a_param_replicate_does_not_take_is_refused_at_submit(rr, fake):
    with httpx.Client(base_url=rr.base, timeout=10) as http:
        r = http.post("/v1/jobs", json={"app_id": "zimage-cloud", "params": {"prompt": "x", "negative_prompt": "blur",
                                                                             "num_images": 2}})
        assert r.status_code == 422, r.text
        assert {e["field"] for e in r.json()["fields"]} == {"params.negative_prompt", "params.num_images"}
        assert "not taken by replicate prunaai/z-image-turbo" in r.text
        assert http.get("/v1/jobs", params={"app_id": "zimage-cloud"}).json()["jobs"] == []  # nothing accepted
        r = http.post("/v1/jobs", json={"app_id": "zimage-cloud", "params": {"prompt": "x", "num_images": 1}})
        assert r.status_code == 202  # the default asks nothing of it
    wait_for(lambda: fake.creates, "the prediction created")
    assert fake.creates[0]["input"] == {"prompt": "x", "width": 1024, "height": 1024, "num_inference_steps": 30}


def test_provider_failure_ends_the_job_with_its_message_without_retrying(rr, fake):
    fake.behaviours["stability-ai/sdxl"] = Behaviour(error="CUDA out of memory")
    with httpx.Client(base_url=rr.base, timeout=10) as http:
        job_id = http.post("/v1/jobs", json={"app_id": "sdxl-cloud", "params": {"prompt": "x"}}).json()["job_id"]
        job = wait_terminal(http, job_id)
    assert job["status"] == "failed" and job["error"] == "ProviderFailed: replicate stability-ai/sdxl: CUDA out of memory"
    assert [e["kind"] for e in job["errors"]] == ["provider_error"] and len(fake.creates) == 1


def test_429_then_success_creates_once(rr, fake):
    # create answers 429 twice (the client never retries a POST; we do), and a GET answers 503 once.
    fake.behaviours["stability-ai/sdxl"] = Behaviour(create_status=[429, 429], get_status=[503],
                                                     output=images_of_the_requested_size)
    with httpx.Client(base_url=rr.base, timeout=10) as http:
        job_id = http.post("/v1/jobs", json={"app_id": "sdxl-cloud", "params": {"prompt": "x", "width": 64,
                                                                                "height": 64}}).json()["job_id"]
        job = wait_terminal(http, job_id)
    assert job["status"] == "succeeded", job
    assert len(fake.creates) == 1 and job["attempts"] == 1
    posts = [q for q in fake.requests if q["method"] == "POST"]
    assert len(posts) == 3  # two refused, one created


def test_cancel_reaches_replicate(rr, fake):
    fake.behaviours["stability-ai/sdxl"] = Behaviour(hang=True)
    with httpx.Client(base_url=rr.base, timeout=10) as http:
        job_id = http.post("/v1/jobs", json={"app_id": "sdxl-cloud", "params": {"prompt": "x"}}).json()["job_id"]
        wait_for(lambda: fake.creates, "the prediction created")
        pid = fake.creates[0]["id"]
        wait_for(lambda: any(q["path"] == f"/v1/predictions/{pid}" for q in fake.requests), "a poll")
        assert http.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
        wait_for(lambda: fake.cancels == [pid], "the cancel at Replicate")
        assert fake.predictions[pid]["status"] == "canceled"
        assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_timeout_cancels_the_prediction_and_the_retry_starts_a_new_one(rr, fake):
    fake.behaviours[SDXL_VERSION] = Behaviour(hang=True)
    with httpx.Client(base_url=rr.base, timeout=10) as http:
        job_id = http.post("/v1/jobs", json={"app_id": "sdxl-version", "params": {"prompt": "x"}}).json()["job_id"]
        job = wait_terminal(http, job_id)
    assert job["status"] == "failed" and job["error"] == "timed out after 1 s on replicate", job
    assert [e["kind"] for e in job["errors"]] == ["timeout", "timeout"]
    assert [c["path"] for c in fake.creates] == ["/v1/predictions"] * 2  # by version; the retry did not reuse the cancelled one
    wait_for(lambda: sorted(fake.cancels) == sorted(c["id"] for c in fake.creates), "both cancelled at Replicate")


def test_router_killed_mid_prediction_reattaches_instead_of_creating_again(db_url, serve_backend, tmp_path,
                                                                           monkeypatch, fake):
    fake.behaviours["stability-ai/sdxl"] = Behaviour(hang=True, output=images_of_the_requested_size)
    cfg = cloud_config(fake, tmp_path)
    art = str(tmp_path / "art")
    with running_router(db_url, serve_backend.redis_url, artifacts=art, cfg=cfg) as a:
        with httpx.Client(base_url=a.base, timeout=10) as http:
            job_id = http.post("/v1/jobs", json={"app_id": "sdxl-cloud", "params": {"prompt": "x", "width": 64,
                                                                                    "height": 64}}).json()["job_id"]
        wait_for(lambda: fake.creates, "the prediction created")
        engine = create_engine(db_url)
        with engine.connect() as c:  # its id is on the row before anyone waits on it
            wait_for(lambda: c.execute(sa.text("SELECT cloud_ref FROM jobs WHERE id = :i"), {"i": job_id}).scalar(),
                     "the prediction id on the job row")
    # Router A is gone without handing anything back (its loop stopped mid-wait), like a killed process.
    fake.behaviours["stability-ai/sdxl"].hang = False
    with running_router(db_url, serve_backend.redis_url, artifacts=art, cfg=cfg) as b:
        b.start_dispatching()
        with httpx.Client(base_url=b.base, timeout=10) as http:
            job = wait_terminal(http, job_id, timeout=40)  # the lease (3 s) expires, B claims and re-attaches
    assert job["status"] == "succeeded", job
    assert len(fake.creates) == 1  # paid once
    assert job["lost_attempts"] == 1 and job["errors"][0]["kind"] == "lost"
    engine.dispose()


def test_cancelling_a_job_whose_router_died_cancels_its_prediction(db_url, serve_backend, tmp_path, monkeypatch, fake):
    fake.behaviours["stability-ai/sdxl"] = Behaviour(hang=True)
    cfg = cloud_config(fake, tmp_path, lease_s=30)  # the dead router's lease has not expired yet
    art = str(tmp_path / "art")
    with running_router(db_url, serve_backend.redis_url, artifacts=art, cfg=cfg) as a:
        with httpx.Client(base_url=a.base, timeout=10) as http:
            job_id = http.post("/v1/jobs", json={"app_id": "sdxl-cloud", "params": {"prompt": "x"}}).json()["job_id"]
            wait_for(lambda: http.get(f"/v1/jobs/{job_id}").json()["status"] == "running", "the job running")
        engine = create_engine(db_url)
        with engine.connect() as c:
            wait_for(lambda: c.execute(sa.text("SELECT cloud_ref FROM jobs WHERE id = :i"), {"i": job_id}).scalar(),
                     "the prediction id on the job row")
        engine.dispose()
    # Router A is gone mid-prediction; the user cancels through router B, which never ran it.
    pid = fake.creates[0]["id"]
    with running_router(db_url, serve_backend.redis_url, artifacts=art, cfg=cfg) as b:
        with httpx.Client(base_url=b.base, timeout=10) as http:
            assert http.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
            wait_for(lambda: fake.cancels == [pid], "the cancel at Replicate")
    assert fake.predictions[pid]["status"] == "canceled" and len(fake.creates) == 1


def test_the_token_is_in_no_log_row_event_or_response(rr, fake, db_url, caplog):
    caplog.set_level(logging.DEBUG)
    fake.behaviours["stability-ai/sdxl"] = Behaviour(output=images_of_the_requested_size)
    fake.behaviours["openai/whisper"] = Behaviour(error="bad audio")
    seen: list[str] = []
    with httpx.Client(base_url=rr.base, timeout=10) as http:
        up = http.post("/v1/artifacts", files={"file": ("a.wav", b"RIFF....WAVEfmt ", "audio/wav")})
        assert up.status_code == 201, up.text
        ids = [http.post("/v1/jobs", json={"app_id": "sdxl-cloud", "params": {"prompt": "x", "width": 64, "height": 64}}),
               http.post("/v1/jobs", json={"app_id": "whisper-cloud", "params": {"audio": up.json()["artifact"]}})]
        for r in ids:
            seen.append(r.text)
            job = wait_terminal(http, r.json()["job_id"])
            seen += [json.dumps(job), http.get(f"/v1/jobs/{job['job_id']}/events").text]
        seen += [http.get(p).text for p in ("/v1/workers", "/v1/apps", "/v1/costs", "/v1/jobs")]
    # Whisper got the audio as a data URI, and its failure says Replicate's words.
    whisper = next(c for c in fake.creates if c["key"] == "openai/whisper")
    assert whisper["input"]["audio"].startswith("data:audio/")
    with create_engine(db_url).connect() as c:
        rows = c.execute(sa.text("SELECT row_to_json(jobs)::text FROM jobs")).scalars().all()
    assert len(rows) == 2
    # The client did send it (so it was in the process), and it is nowhere we keep or show.
    assert all(q["headers"].get("authorization") == f"Bearer {fake.token}" for q in fake.requests
               if q["path"].startswith("/v1/"))
    for where, text in [("responses/events", "\n".join(seen)), ("rows", "\n".join(rows)), ("logs", caplog.text)]:
        assert fake.token not in text, where
    assert repr(rr.router.cloud["replicate"].provider).endswith("token=set)")


def test_costs_of_local_and_cloud_jobs_by_hand(db_url, serve_backend, tmp_path, monkeypatch, fake):
    from click.testing import CliRunner

    from gpu_orchestrator.cli import cli

    fake.behaviours["stability-ai/sdxl"] = Behaviour(output=images_of_the_requested_size, predict_time=3.2)
    cfg = cloud_config(fake, tmp_path)
    cfg["models"]["echo"].update(num_gpus=0.5, gpu_type="L4")  # half an L4 at $0.7992/GPU-hour
    with running_router(db_url, serve_backend.redis_url, artifacts=str(tmp_path / "art"), cfg=cfg) as rr, httpx.Client(base_url=rr.base, timeout=10) as http:
        local = wait_terminal(http, http.post("/v1/jobs", json={"app_id": "echo", "params": {"delay_s": 0.3}}).json()["job_id"])
        cloud = wait_terminal(http, http.post("/v1/jobs", json={"app_id": "sdxl-cloud", "params": {
            "prompt": "x", "width": 64, "height": 64}}).json()["job_id"])
        assert local["status"] == cloud["status"] == "succeeded"
        seconds = local["cost"]["usage"]["seconds"]
        assert seconds >= 0.3 and local["cost"]["usage"]["gpu_type"] == "L4" and local["route"] == "local"
        assert local["cost"]["gpu_seconds"] == pytest.approx(seconds * 0.5, abs=1e-3)
        assert local["cost"]["usd"] == pytest.approx(seconds * 0.5 * 0.7992 / 3600, rel=1e-3)
        assert cloud["cost"]["usd"] == pytest.approx(3.2 * 0.000975)
        by_backend = http.get("/v1/costs").json()
        rows = {g["key"]: g for g in by_backend["groups"]}
        assert rows["local"]["jobs"] == 1 and rows["local"]["usd"] == pytest.approx(local["cost"]["usd"])
        assert rows["replicate"] == {"key": "replicate", "jobs": 1, "cloud_jobs": 1, "gpu_seconds": 3.2,
                                     "usd": pytest.approx(0.00312)}
        assert by_backend["cloud_share"] == 0.5
        assert by_backend["total"]["usd"] == pytest.approx(local["cost"]["usd"] + 0.00312)
        by_app = {g["key"]: g["jobs"] for g in http.get("/v1/costs", params={"group_by": "app"}).json()["groups"]}
        assert by_app == {"echo": 1, "sdxl-cloud": 1}
        only = http.get("/v1/costs", params={"app_id": "sdxl-cloud", "group_by": "day"}).json()
        assert len(only["groups"]) == 1 and only["total"]["jobs"] == 1 and only["cloud_share"] == 1.0
        assert only["groups"][0]["key"] == cloud["finished_at"][:10]
        # A window with nothing in it, and bad input named.
        empty = http.get("/v1/costs", params={"until": "2020-01-01T00:00:00Z"}).json()
        assert empty["total"]["jobs"] == 0 and empty["cloud_share"] == 0.0
        bad = http.get("/v1/costs", params={"since": "yesterday"})
        assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "since"
        bad = http.get("/v1/costs", params={"since": "2030-01-01T00:00:00Z", "until": "2029-01-01T00:00:00Z"})
        assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "since"
        out = CliRunner().invoke(cli, ["--url", rr.base, "costs"])
        assert out.exit_code == 0, out.output
        assert "cloud share of jobs 50.0%" in out.output and "replicate" in out.output
        out = CliRunner().invoke(cli, ["--url", rr.base, "workers"])
        assert "cloud replicate: available  apps ['cloud', 'sdxl-cloud', 'zimage-cloud', 'sdxl-version', 'whisper-cloud']" in out.output
