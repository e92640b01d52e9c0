"""The README's commands as a user on a fresh machine runs them: HOME an empty temporary directory
(GPU_ORCH_HOME under it), no DATABASE_URL/REDIS_URL, no Ray address or auth token from outside.
Nothing another test or an earlier run left in a HOME can hide a missing step."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
GPU_ORCH = str(Path(sys.executable).parent / "gpu-orch")
OUTSIDE_VARS = ("DATABASE_URL", "REDIS_URL", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                "GPU_ORCH_HOME", "GPU_ORCH_URL")



@dataclass
class User:
    home: Path  # $HOME, empty at the start
    gpu_home: Path  # $GPU_ORCH_HOME
    env: dict[str, str]

    def gpu_orch(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([GPU_ORCH, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def ok(self, *args: str, timeout: float = 300) -> str:
        r = self.gpu_orch(*args, timeout=timeout)
        assert r.returncode == 0, f"gpu-orch {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
        return r.stdout + r.stderr

    def processes(self) -> list[str]:
        """Processes whose command line names a path under this HOME (embedded Postgres/Redis, ...)."""
        return processes_mentioning(str(self.home))


def processes_mentioning(text: str) -> list[str]:
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and text in " ".join(p.info["cmdline"] or ()):
                out.append(f"{p.pid} {' '.join(p.info['cmdline'])[:200]}")
        except psutil.Error:
            pass
    return out


@pytest.fixture
def user():
    # Not pytest's tmp_path: another pytest session resets its root to 0700, cutting off the embedded
    # Postgres (its own system user when we are root) from its data directory.
    home = Path(tempfile.mkdtemp(prefix="gpu-orch-e2e-home-"))
    env = {k: v for k, v in os.environ.items() if k not in OUTSIDE_VARS}
    # Free ports for the Ray head, so a stack the machine's user runs on the defaults is no conflict.
    env.update(HOME=str(home), GPU_ORCH_HOME=str(home / ".gpu-orch"),
               GPU_ORCH_RAY_PORT=str(free_port()), GPU_ORCH_RAY_DASHBOARD_PORT=str(free_port()))
    u = User(home=home, gpu_home=home / ".gpu-orch", env=env)
    yield u
    subprocess.run([GPU_ORCH, "down"], env=env, cwd=ROOT, capture_output=True, timeout=300)
    for line in u.processes():  # whatever a failing test left; never anything outside this HOME
        try:
            psutil.Process(int(line.split()[0])).kill()
        except psutil.Error:
            pass
    shutil.rmtree(home, ignore_errors=True)
