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
def test_up_submit_down_restart_keeps_jobs(tmp_path):
    port = free_port()
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "RAY_ADDRESS")}
    env["GPU_ORCH_HOME"] = str(tmp_path / "home")
    try:
        out = run(["up", "--config", str(config), "--num-cpus", "4"], env)
        assert "starting embedded Postgres" in out and "starting embedded Redis" in out
        assert f"http://127.0.0.1:{port}/v1/jobs" in out
        assert (tmp_path / "home" / "postgres" / "PG_VERSION").exists()
        with Client(f"http://127.0.0.1:{port}") as c:
            job = c.submit("echo", {"message": "embedded", "steps": 2})
            done = c.wait(job["job_id"], timeout=120)
            assert done["status"] == "succeeded" and done["result"]["echo"]["message"] == "embedded"
        run(["down"], env)
        run(["up", "--config", str(config), "--num-cpus", "4"], env)
        with Client(f"http://127.0.0.1:{port}") as c:
            assert c.get(job["job_id"])["status"] == "succeeded"  # survived the restart
    finally:
        subprocess.run([GPU_ORCH, "down"], env=env, cwd=ROOT, capture_output=True, timeout=300)
