"""`echo`: a SYNTHETIC model. Returns its params after an optional delay.

It does no inference: it is the no-op model for benchmarks and the stand-in for heavy models in
scheduling tests (configurable load time and declared VRAM). Every result says `synthetic: true`.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from .base import JobContext, ModelDeployment


class Echo(ModelDeployment):
    model_name = "echo"
    synthetic = True

    def __init__(self, *, load_time_s: float = 0.0, vram_gb: float = 0.0, redis_url: str | None = None,
                 report_packages: list[str] | None = None, run_log: str | None = None,
                 warm_load_time_s: float | None = None):
        self._load_time_s = load_time_s
        # A wake from host memory: a tenth of a cold load unless told (bench/warm.py measured 0.05x).
        self._warm_load_time_s = load_time_s / 10 if warm_load_time_s is None else warm_load_time_s
        self._weights: bytes | None = None
        # Fault runs count how often each job really started on a model: one line per start.
        self._run_log = run_log
        # Versions of these packages as this replica sees them (its runtime_env), in every result.
        self._packages = {p: _version(p) for p in (report_packages or [])}
        super().__init__(redis_url=redis_url, vram_gb=vram_gb)

    def load(self) -> None:
        # Simulated weight loading, so scheduling tests see a real cold-start cost.
        if self._load_time_s > 0:
            time.sleep(self._load_time_s)
        self._weights = b"loaded"

    # The warm tier, simulated: parking keeps the "weights"; waking costs warm_load_time_s.
    def offload(self) -> float:
        return float(self.declared_vram_gb)

    def onload(self) -> None:
        if self._warm_load_time_s > 0:
            time.sleep(self._warm_load_time_s)

    def unload(self) -> None:
        self._weights = None

    async def infer(self, params: dict[str, Any], ctx: JobContext) -> Any:
        if self._run_log:
            with open(self._run_log, "a") as f:  # one short O_APPEND write: lines never interleave
                f.write(f"{ctx.job_id} {ctx.attempt}\n")
        delay = float(params.get("delay_s", 0.0))
        steps = int(params.get("steps", 1))
        if params.get("fail_message"):
            raise RuntimeError(params["fail_message"])
        for step in range(1, steps + 1):
            if delay > 0:
                await asyncio.sleep(delay / steps)
            ctx.check_cancelled()  # a cheap Redis EXISTS, rate-limited in JobContext
            if steps > 1 or delay > 0:
                await asyncio.to_thread(ctx.progress, step=step, total=steps)
        if self._weights is None:  # never on a half-loaded model (base.py's park and wake)
            raise RuntimeError("echo: ran with no model loaded")
        out = {"synthetic": True, "echo": params, "replica_pid": os.getpid(), "attempt": ctx.attempt}
        if self._packages:
            out["packages"] = self._packages
        return out


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None

