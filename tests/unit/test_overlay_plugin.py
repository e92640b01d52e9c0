"""The overlay_pip plugin as Ray's runtime_env agent calls it: asked for the URIs of every
runtime_env (also those without its field), it builds only its own and points the worker's Python
at the overlay."""

from __future__ import annotations

import asyncio
import logging

from ray._private.runtime_env.context import RuntimeEnvContext
from ray.runtime_env import RuntimeEnv

from gpu_orchestrator.serve import overlay_env
from gpu_orchestrator.serve.overlay_plugin import OverlayPip


def test_the_agent_can_ask_any_runtime_env_and_gets_the_overlays_python(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_ORCH_HOME", str(tmp_path))
    plugin, log = OverlayPip(), logging.getLogger("test")
    assert plugin.get_uris(RuntimeEnv(env_vars={"A": "1"})) == []
    env = RuntimeEnv(**overlay_env.overlaid({"pip": ["tabulate==0.8.10"]}))
    OverlayPip.validate(env)
    (uri,) = plugin.get_uris(env)
    ctx = RuntimeEnvContext()
    assert asyncio.run(plugin.create(uri, env, ctx, log)) == 0
    plugin.modify_context([uri], env, ctx, log)
    assert ctx.py_executable.startswith(str(tmp_path / "envs")) and ctx.py_executable.endswith("/bin/python")
