"""Build the models' runtime_envs before a deploy whose models start with no replica (the arbiter's:
each scales from zero on its first job). Ray builds a pip/uv/conda environment when the first
process needs it and keys it by its packages, so one task per distinct environment builds what the
replicas will find ready: a job's wait for its model's first load is the load, not minutes of pip.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

BUILT_BY_RAY = ("pip", "uv", "conda", "overlay_pip")  # the runtime_env fields Ray builds an environment for


def model_envs(args: dict[str, Any], base_dir: Path | None = None) -> tuple[bool, dict[str, dict[str, Any]]]:
    """(whether the arbiter starts the models at zero, each model's environment to build) for the
    orchestrator application's args, as the app builder will resolve them (profile applied)."""
    from gpu_orchestrator.core.config import parse_config
    from gpu_orchestrator.serve.app import load_runtime_env

    cfg = parse_config(args)
    envs = {}
    for name, m in cfg.models.items():
        env = load_runtime_env(m.runtime_env, base_dir) or {}
        built = {k: v for k, v in env.items() if k in BUILT_BY_RAY}
        if built:
            envs[name] = built
    return cfg.arbiter.enabled, envs


def warm(envs: dict[str, dict[str, Any]], say: Callable[[str], None], timeout_s: float = 1800.0) -> None:
    """Build each distinct environment once (in parallel), saying which models each serves and how
    long it took; raise with Ray's message (pip's error) when one cannot be built."""
    import ray

    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for model, env in envs.items():
        groups.setdefault(json.dumps(env, sort_keys=True), (env, []))[1].append(model)
    if not groups:
        return

    @ray.remote(num_cpus=0)
    def ready() -> bool:
        return True

    def waiting_for() -> str:
        return ", ".join(m for ms in pending.values() for m in ms)

    t0 = time.monotonic()
    pending = {}
    for env, models in groups.values():
        pending[ready.options(runtime_env=env).remote()] = models
    say(f"building {len(groups)} runtime_env(s) for {waiting_for()} (the first time: a few minutes) ...")
    while pending:
        done, _ = ray.wait(list(pending), timeout=30)
        for ref in done:
            models = pending.pop(ref)
            try:
                ray.get(ref)
            except Exception as e:
                raise RuntimeError(f"the runtime_env of {', '.join(models)} could not be built: {e}") from None
            say(f"runtime_env of {', '.join(models)} ready ({time.monotonic() - t0:.0f} s)")
        if not done:
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"runtime_envs of {waiting_for()} not built after {timeout_s:.0f} s")
            say(f"still building the runtime_env of {waiting_for()} ({time.monotonic() - t0:.0f} s)")
