"""Deploy a Serve config (the serve_config.yaml format) from Python, the way `serve deploy` does.

`serve deploy` goes through the dashboard's REST API; this calls the same controller method
(`apply_config`) directly, so it needs no dashboard and no auth token plumbing. Unlike `serve.run`,
a config deploy supports everything the YAML does (e.g. application-level autoscaling policies).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable

import yaml


def load_config(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or "applications" not in data:
        raise ValueError(f"{path}: not a Serve deploy config (no 'applications')")
    return data


def with_env(config: dict[str, Any], env: dict[str, str], app_name: str | None = None) -> dict[str, Any]:
    """Copy of the config with env vars added to each application's runtime_env (or one app's)."""
    out = copy.deepcopy(config)
    for app in out["applications"]:
        if app_name is None or app["name"] == app_name:
            rt = app.setdefault("runtime_env", {}) or {}
            app["runtime_env"] = rt
            rt.setdefault("env_vars", {}).update(env)
    return out


def connect(address: str) -> None:
    """Connect this process to the Ray cluster as a driver (the auth token is in the environment)."""
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")


def disconnect() -> None:
    """Leave the cluster if this process joined it (a failed `up` rolling back)."""
    import sys

    if "ray" in sys.modules:
        import ray

        ray.shutdown()


def delete_app(address: str, *app_names: str) -> None:
    """Delete Serve applications (their replicas stop gracefully), as a short-lived driver."""
    from ray import serve

    connect(address)
    try:
        for name in app_names:
            serve.delete(name)
    finally:
        disconnect()


def deploy(config: dict[str, Any], *, wait: bool = True, on_change: Callable[[str], None] | None = None) -> None:
    """Apply the config on the connected Ray cluster (ray.init must have been called)."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        grpc_options=schema.grpc_options.model_dump(),
        global_logging_config=schema.logging_config,
    )
    client.deploy_apps(schema, _blocking=False)
    if wait:
        wait_running([a.name for a in schema.applications], on_change=on_change)


def wait_running(app_names: list[str], timeout_s: float = 900.0, on_change: Callable[[str], None] | None = None) -> None:
    """Wait until every app is RUNNING; raise with Serve's own message if one fails to deploy.
    `on_change` gets a line each time a deployment's status changes (progress for a long deploy)."""
    import time

    from ray import serve

    deadline = time.monotonic() + timeout_s
    seen: dict[str, str] = {}
    while True:
        apps = serve.status().applications
        if on_change is not None:
            for n in app_names:
                for dep, st in (apps[n].deployments.items() if n in apps else ()):
                    # Serve's messages run to paragraphs; the first sentence says what is going on.
                    msg = next(iter((st.message or "").strip().split(". ")[0].splitlines()), "")
                    line = f"{dep}: {str(st.status).rsplit('.', 1)[-1]}" + (f" ({msg})" if msg else "")
                    if seen.get(dep) != line:
                        seen[dep] = line
                        on_change(line)
        states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in app_names}
        failed = {n: apps[n].message for n in app_names if n in apps and str(apps[n].status).endswith("DEPLOY_FAILED")}
        if failed:
            raise RuntimeError("deploy failed: " + "; ".join(f"{n}: {m}" for n, m in failed.items()))
        if all(str(s).endswith("RUNNING") for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"applications not running after {timeout_s:g}s: {states}")
        time.sleep(0.5)


def ray_session_dir() -> Path | None:
    """The connected Ray cluster's session directory (Ray has no public API for it)."""
    try:
        import ray

        return Path(ray._private.worker._global_node.get_session_dir_path())
    except Exception:
        return None


def drop_runtime_envs(session_dir: str | Path | None, wait: bool = True) -> None:
    """Delete a stopped Ray session's runtime_env virtualenvs. Ray keeps them after shutdown, and
    each pip env is a full clone of the base virtualenv (torch included: over 1 GB), so every
    session would otherwise leave several GB in /tmp/ray. wait=False hands the deletion (20 s of
    a 2-core box for four clones) to a process of its own that outlives this one."""
    import shutil
    import subprocess

    if not session_dir:
        return
    envs = Path(session_dir) / "runtime_resources"
    if wait or not envs.exists():
        shutil.rmtree(envs, ignore_errors=True)
        return
    gone = envs.with_name(f"runtime_resources.dropped-{os.getpid()}")
    envs.rename(gone)  # the session's own path is free at once
    subprocess.Popen(["rm", "-rf", str(gone)], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
