"""The `overlay_pip` runtime_env plugin's class, which Ray's runtime_env agent loads on each node
(RAY_RUNTIME_ENV_PLUGINS); what it builds and how: serve/overlay_env.py."""

from __future__ import annotations

import asyncio

from ray._private.runtime_env.plugin import RuntimeEnvPlugin

from gpu_orchestrator.serve.overlay_env import NAME, build, envs_root, key, python_of, ready


class OverlayPip(RuntimeEnvPlugin):
    name = NAME

    @staticmethod
    def validate(runtime_env_dict: dict) -> None:
        spec = runtime_env_dict.get(NAME)
        if not isinstance(spec, dict) or not all(isinstance(p, str) for p in spec.get("packages", [])):
            raise ValueError(f"runtime_env {NAME}: expected {{packages: [str], pip_install_options: [str]}}, got {spec!r}")

    def get_uris(self, runtime_env) -> list[str]:
        # Asked of every plugin for every runtime_env (the agent's reference counting).
        spec = runtime_env.get(NAME)
        return [f"{NAME}://{key(spec)}"] if spec else []

    async def create(self, uri, runtime_env, context, logger) -> float:
        env_dir = envs_root() / uri.split("://", 1)[1]
        await asyncio.get_running_loop().run_in_executor(None, build, env_dir, runtime_env[NAME], logger)
        return 0  # reused by later sessions: not Ray's to count or delete

    def modify_context(self, uris, runtime_env, context, logger) -> None:
        env_dir = envs_root() / uris[0].split("://", 1)[1]
        if not ready(env_dir):
            raise ValueError(f"{NAME}: no finished environment at {env_dir} (its build failed: see runtime_env_setup logs)")
        context.py_executable = str(python_of(env_dir))

    def delete_uri(self, uri: str, logger) -> float:
        return 0
