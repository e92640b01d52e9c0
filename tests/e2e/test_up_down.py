"""The README's main command path: `gpu-orch up` on the embedded default (no DATABASE_URL/REDIS_URL),
a job through it, `gpu-orch down`, and the data surviving a restart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpu_orchestrator import Client

from ..serve.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
GPU_ORCH = str(Path(sys.executable).parent / "gpu-orch")


def run(args, env, timeout=300):
    r = subprocess.run([GPU_ORCH, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"gpu-orch {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


@pytest.mark.serve
@pytest.mark.timeout(1500)  # a fresh Ray cluster builds each model's runtime_env (pip cache: minutes)
def test_up_submit_down_restart_keeps_jobs(tmp_path):
    port = free_port()
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "RAY_ADDRESS")}
    env["GPU_ORCH_HOME"] = str(tmp_path / "home")
    try:
        # The README's main command: the demo profile, every model tiny and untrained, on a CPU.
        out = run(["up", "--demo", "--config", str(config), "--num-cpus", "4"], env, timeout=900)
        assert "starting embedded Postgres" in out and "starting embedded Redis" in out
        assert f"http://127.0.0.1:{port}/v1/jobs" in out and "demo profile" in out
        assert "sdxl: " in out  # deployment progress while the runtime_envs build
        assert (tmp_path / "home" / "postgres" / "PG_VERSION").exists()
        with Client(f"http://127.0.0.1:{port}") as c:
            job = c.submit("echo", {"message": "embedded", "steps": 2})
            done = c.wait(job["job_id"], timeout=120)
            assert done["status"] == "succeeded" and done["result"]["echo"]["message"] == "embedded"
            apps = {a["id"]: a for a in c.apps()}
            assert {"sdxl", "zimage", "transcribe", "chat"} <= set(apps) and "untrained" in apps["sdxl"]["name"]
            img = c.wait(c.submit("sdxl", {"prompt": "a red fox", "width": 128, "height": 64,
                                           "num_inference_steps": 2})["job_id"], timeout=300)
            assert img["status"] == "succeeded" and img["result"]["untrained"] is True, img
            png = c.download(img["result"]["images"][0]["url"])
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            # Artifacts and tiny models live under GPU_ORCH_HOME.
            assert list((tmp_path / "home" / "artifacts" / "sdxl").rglob("*.png"))
            assert (tmp_path / "home" / "tiny-models" / "sdxl" / "BUILT").exists()
        import json

        session = Path(json.loads((tmp_path / "home" / "state.json").read_text())["ray_session_dir"])
        assert (session / "runtime_resources").is_dir()
        run(["down"], env)
        # Ray keeps every session's runtime_env virtualenvs (GBs); `down` drops the ones it made.
        assert session.is_dir() and not (session / "runtime_resources").exists()
        # The real profile (arbiter on, models scaled to zero until a job needs them): nothing loads.
        run(["up", "--config", str(config), "--num-cpus", "4"], env)
        with Client(f"http://127.0.0.1:{port}") as c:
            assert c.get(job["job_id"])["status"] == "succeeded"  # survived the restart
    finally:
        subprocess.run([GPU_ORCH, "down"], env=env, cwd=ROOT, capture_output=True, timeout=300)
