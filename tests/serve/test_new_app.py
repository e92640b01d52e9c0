"""Apps made by `gpu-orch new-app` run on the demo profile unchanged: one of each task, generated
into a project copy, deployed from that copy's serve_config.yaml into this session's Ray instance
(tests/serve/new_app_scenario.py: one more Serve application, its own router and database), each
runs a job through the router to a succeeded result, with progress events on its SSE stream."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpu_orchestrator.cli import cli
from tests.ray_session import TINY_DIR

pytestmark = pytest.mark.serve

ROOT = Path(__file__).resolve().parents[2]
APPS = {"gen_pic": "image", "gen_hear": "audio", "gen_write": "text", "gen_talk": "chat"}


@pytest.mark.timeout(300)
def test_generated_apps_run_jobs_on_the_demo_profile(orchestrator, serve_backend, tmp_path):
    import ray

    root = tmp_path / "project"
    root.mkdir()
    shutil.copy2(ROOT / "serve_config.yaml", root)
    shutil.copytree(ROOT / "runtime_envs", root / "runtime_envs")
    shutil.copytree(ROOT / "deployments", root / "deployments", ignore=shutil.ignore_patterns("__pycache__"))
    for name, task in APPS.items():
        r = CliRunner().invoke(cli, ["new-app", name, "--task", task, "--root", str(root)])
        assert r.exit_code == 0, r.output
    db = serve_backend.fresh_database()
    spec = {"address": ray.get_runtime_context().gcs_address, "base": orchestrator, "app": "new-apps",
            "prefix": "/new-apps", "database_url": serve_backend.url_for(db), "redis_url": serve_backend.redis_url,
            "artifacts_url": TINY_DIR + "/artifacts", "apps": APPS}
    try:
        r = subprocess.run([sys.executable, str(Path(__file__).with_name("new_app_scenario.py")), json.dumps(spec)],
                           cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True,
                           timeout=240)
    finally:
        serve_backend.drop(db)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert r.returncode == 0 and line, r.stdout[-3000:] + r.stderr[-5000:]
    res = json.loads(line[len("RESULT "):])
    jobs, progress = res["jobs"], res["progress"]
    for name in APPS:
        assert jobs[name]["status"] == "succeeded", (name, jobs[name].get("error"))
        assert jobs[name]["result"]["untrained"] is True and "untrained" in res["apps"][name]["name"]
    # image: PNGs in the artifact store, served by the router; a progress event per step.
    assert res["png"] is True and jobs["gen_pic"]["result"]["images"][0]["width"] == 64
    assert [e["step"] for e in progress["gen_pic"] if "step" in e] == [1, 2, 3]
    # audio: the uploaded WAV transcribed in 1 s windows (the demo model's), one event each.
    assert [(s["start"], s["end"]) for s in jobs["gen_hear"]["result"]["segments"]] == [(0.0, 1.0), (1.0, 1.5)]
    assert [e.get("step") for e in progress["gen_hear"]] == [None, 1, 2]
    # text and chat: every token an event, the result their concatenation.
    for name in ("gen_write", "gen_talk"):
        result = jobs[name]["result"]
        assert result["completion_tokens"] == 6 and "".join(e["token"] for e in progress[name]) == result["text"]
    # chat: also on the OpenAI-compatible endpoint.
    assert res["openai"]["choices"][0]["finish_reason"] == "length", res["openai"]
    assert res["openai"]["usage"]["completion_tokens"] == 4
