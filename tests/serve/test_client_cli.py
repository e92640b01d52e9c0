"""The Python client (sync and async) and the CLI against the running router."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from gpu_orchestrator import ApiError, AsyncClient, Client
from gpu_orchestrator.cli import cli

pytestmark = pytest.mark.serve


def test_sync_client(orchestrator):
    with Client(orchestrator) as c:
        job = c.submit("echo", {"message": "sync", "steps": 2})
        done = c.wait(job["job_id"], timeout=60)
        assert done["status"] == "succeeded" and done["result"]["echo"]["message"] == "sync"
        assert c.get(job["job_id"])["attempts"] == 1
        assert any(j["job_id"] == job["job_id"] for j in c.list(app_id="echo", limit=100)["jobs"])
        assert "echo" in {a["id"] for a in c.apps()}
        assert "echo" in {m["deployment"] for m in c.workers()}
        with pytest.raises(ApiError) as e:
            c.submit("echo", {"steps": -1})
        assert e.value.status == 422 and "params.steps" in e.value.message
        with pytest.raises(ApiError) as e:
            c.cancel(job["job_id"])
        assert e.value.status == 409


def test_async_client_streams_events(orchestrator):
    async def go():
        async with AsyncClient(orchestrator) as c:
            job = await c.submit("echo", {"steps": 3, "delay_s": 0.3})
            events = [ev async for ev in c.events(job["job_id"])]
            final = await c.wait(job["job_id"], timeout=30)
            return events, final

    events, final = asyncio.run(go())
    assert [e["data"]["step"] for e in events if e["event"] == "progress"] == [1, 2, 3]
    assert events[-1]["data"]["status"] == "succeeded" and final["status"] == "succeeded"


def test_cli_submit_wait_and_inspect(orchestrator):
    run = CliRunner().invoke
    r = run(cli, ["--url", orchestrator, "submit", "echo", "-p", "message=from cli", "-p", "steps=3", "--wait"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    job = json.loads(out[out.index("{"):])
    assert job["status"] == "succeeded" and job["result"]["echo"] == {"message": "from cli", "steps": 3, "delay_s": 0.0}
    assert "status: succeeded" in r.stderr
    r = run(cli, ["--url", orchestrator, "status", job["job_id"]])
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "succeeded"
    r = run(cli, ["--url", orchestrator, "jobs", "--app", "echo", "--limit", "5"])
    assert r.exit_code == 0 and "echo" in r.stdout
    r = run(cli, ["--url", orchestrator, "apps"])
    assert "echo [SYNTHETIC]" in r.stdout and "steps: integer" in r.stdout
    r = run(cli, ["--url", orchestrator, "workers"])
    assert "echo [SYNTHETIC]" in r.stdout and "resident" in r.stdout
    r = run(cli, ["--url", orchestrator, "submit", "echo", "-p", "steps=zero"])
    assert r.exit_code != 0 and "params.steps" in str(r.exception) + r.output


def test_cli_image_job_saves_pngs(orchestrator, tmp_path):
    from PIL import Image

    r = CliRunner().invoke(cli, ["--url", orchestrator, "submit", "sdxl", "-p", "prompt=a red fox", "-p", "width=64",
                                 "-p", "height=64", "-p", "num_inference_steps=2", "--wait", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    saved = sorted(tmp_path.glob("*.png"))
    assert len(saved) == 1 and Image.open(saved[0]).size == (64, 64) and "saved" in r.stderr


def test_cli_uploads_a_file_param(orchestrator, tmp_path):
    from .test_whisper import tone_wav

    clip = tmp_path / "clip.wav"
    clip.write_bytes(tone_wav(1.0))
    r = CliRunner().invoke(cli, ["--url", orchestrator, "submit", "transcribe", "-f", f"audio={clip}", "--wait"])
    assert r.exit_code == 0, r.output
    job = json.loads(r.stdout[r.stdout.index("{"):])
    assert job["params"]["audio"].startswith("artifact://") and job["result"]["audio_s"] == pytest.approx(1.0, abs=0.01)
    assert "stage: decoded" in r.stderr
    r = CliRunner().invoke(cli, ["--url", orchestrator, "submit", "transcribe", "-f", "audio=/no/such.wav"])
    assert r.exit_code != 0 and "-f/--file" in r.output
