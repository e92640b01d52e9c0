"""Builds the orchestrator application: the router plus one deployment per model.

`import_path: serve_apps.orchestrator:build_app` in serve_config.yaml; the same function from Python:
`serve.run(build_app(args))`. Deployment classes stay undecorated; options come from the config.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import yaml
from ray import serve
from ray.serve import Application

from gpu_orchestrator.core.config import GRPC_MAX_MESSAGE_BYTES, ConfigError, OrchestratorConfig, parse_config
from gpu_orchestrator.core.keys import auth_required
from gpu_orchestrator.settings import Settings

ROUTER_NAME = "router"


def import_attr(path: str) -> Any:
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {path!r}: {e}") from None


def resolve_urls(cfg: OrchestratorConfig) -> tuple[str, str]:
    settings = Settings()
    db = cfg.database_url or settings.database_url
    redis = cfg.redis_url or settings.redis_url
    missing = [n for n, v in (("DATABASE_URL", db), ("REDIS_URL", redis)) if not v]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} not set: set them, or run `gpu-orch up`, which starts an embedded "
            "Postgres/Redis and passes their URLs to the application"
        )
    return db, redis  # type: ignore[return-value]


# Model deployments under the arbiter: Serve's own autoscaler applies the targets the router's
# arbiter reports (serve/autoscaling.py); no delays, so a decision takes effect at once.
# A short look-back keeps the latest report fresh (metrics are recorded every look_back x 0.2 s),
# and a 0.5 s push interval means a scale-from-zero does not wait out the default 10 s.
# Requests aggregate by their minimum over the look-back: Serve's cold-start fast path restarts a
# deployment with no replicas whose aggregated requests are above zero, overriding the arbiter's 0;
# with the window mean, a model evicted a second after its last job came straight back.
def arbiter_autoscaling(max_replicas: int) -> dict[str, Any]:
    return {
        "min_replicas": 0,
        "initial_replicas": 0,
        "max_replicas": max_replicas,
        "look_back_period_s": 2,
        "aggregation_function": "min",
        "metrics_interval_s": 0.5,
        "upscale_delay_s": 0,
        "downscale_delay_s": 0,
        "downscale_to_zero_delay_s": 0,
    }


# The router's code never blocks its event loop (every blocking call goes through a thread), so it
# runs on the replica's own loop, and its Serve handles route there too: no hop between threads per
# request and per model call.
# Serve's gRPC between replicas (router.model_calls) caps a message at 4 MiB by default, on the
# router's side for a result and on the model's for a job's params: both sides raise it.
MODEL_CALL_ENV = {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(GRPC_MAX_MESSAGE_BYTES)}
ROUTER_SERVE_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
                    **MODEL_CALL_ENV}


def resolve_artifacts(cfg: OrchestratorConfig) -> str:
    settings = Settings()
    return cfg.artifacts_url or settings.artifacts_url or str(settings.home / "artifacts")


def model_deployments(cfg: OrchestratorConfig, redis_url: str, base_dir: Path | None = None,
                      artifacts_url: str | None = None) -> dict[str, Any]:
    out = {}
    arbiter = cfg.arbiter
    for name, m in cfg.models.items():
        cls = import_attr(m.impl)
        actor_opts: dict[str, Any] = {"num_cpus": m.num_cpus, "num_gpus": m.num_gpus}
        resources = dict(m.resources)
        if m.pin:
            resources[f"node_type:{m.pin}"] = 0.001  # nodes declare node_type:<name>: 1
        if arbiter.enabled and arbiter.vram_resource and cfg.model_vram_gb(name) > 0:
            resources[arbiter.vram_resource] = cfg.model_vram_gb(name)
        if resources:
            actor_opts["resources"] = resources
        runtime_env = load_runtime_env(m.runtime_env, base_dir) or {}
        env_vars = {**MODEL_CALL_ENV, **runtime_env.get("env_vars", {})}  # the model's own env wins
        if cfg.log_format != "text":  # the replica's logs as the router's (logs.configure_from_env)
            env_vars["GPU_ORCH_LOG_FORMAT"] = cfg.log_format
        actor_opts["runtime_env"] = {**runtime_env, "env_vars": env_vars}
        scale: dict[str, Any] = (
            {"autoscaling_config": arbiter_autoscaling(m.max_replicas)} if arbiter.enabled else {"num_replicas": m.num_replicas}
        )
        dep = serve.deployment(
            cls,
            name=name,
            max_ongoing_requests=m.max_ongoing_requests,
            ray_actor_options=actor_opts,
            **scale,
        )
        init = dict(m.init)
        init.setdefault("vram_gb", cfg.model_vram_gb(name))
        if artifacts_url and "artifacts_url" in inspect.signature(cls.__init__).parameters:
            init.setdefault("artifacts_url", artifacts_url)
        out[name] = dep.bind(**init, redis_url=redis_url)
    return out


def build_app(args: dict[str, Any]) -> Application:
    cfg = parse_config(args)
    db, redis = resolve_urls(cfg)
    from gpu_orchestrator.serve.router import RouterIngress

    artifacts = resolve_artifacts(cfg)
    models = model_deployments(cfg, redis, artifacts_url=artifacts)
    # Under the arbiter the router needs an autoscaling_config of its own (min = max): without one
    # Serve keeps no autoscaling state for it and its record_autoscaling_stats never reach the policy.
    scale: dict[str, Any] = (
        {"autoscaling_config": {"min_replicas": cfg.router.num_replicas, "max_replicas": cfg.router.num_replicas,
                                "initial_replicas": cfg.router.num_replicas, "look_back_period_s": 2,
                                "metrics_interval_s": 0.5}}
        if cfg.arbiter.enabled else {"num_replicas": cfg.router.num_replicas}
    )
    router = serve.deployment(
        RouterIngress,
        name=ROUTER_NAME,
        **scale,
        max_ongoing_requests=cfg.router.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.router.num_cpus, "runtime_env": {"env_vars": ROUTER_SERVE_ENV}},
    )
    # The parsed config itself (parsed once, here); the URLs travel apart, already resolved; so does
    # router.auth (auto: on unless Serve's proxy listens on loopback only).
    host = serve_http_host()
    auth = "on" if auth_required(cfg.router.auth, host) else "off"
    # Webhooks to loopback receivers: allowed by default when the proxy listens on loopback only.
    wh = cfg.router.webhooks
    if wh.allow_loopback is None:
        wh = wh.model_copy(update={"allow_loopback": not auth_required("auto", host)})
    bound_cfg = cfg.model_copy(update={"database_url": None, "redis_url": None, "artifacts_url": None,
                                       "router": cfg.router.model_copy(update={"auth": auth, "webhooks": wh})})
    return router.bind(bound_cfg, models, db, redis, artifacts)


def serve_http_host() -> str | None:
    """The host Serve's HTTP proxies bind (None when it cannot be asked: treated as exposed)."""
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client().http_config.host
    except Exception:
        return None


def load_runtime_env(spec: str | dict[str, Any] | None, base_dir: Path | None = None) -> dict[str, Any] | None:
    """Resolve a model's runtime_env: inline dict, or a YAML file path. Its `pip` packages go to
    the overlay plugin where this Ray loads it (serve/overlay_env.py: no copy of the base install)."""
    if spec is None or isinstance(spec, dict):
        return spec if spec is None else _served(spec)
    candidates = [Path(spec)]
    if base_dir is not None:
        candidates.insert(0, base_dir / spec)
    here = Path(__file__).resolve().parents[2]  # the project root (runtime_envs/)
    candidates.append(here / spec)
    for path in candidates:
        if path.is_file():
            data = yaml.safe_load(path.read_text()) or {}
            if not isinstance(data, dict):
                raise ConfigError(f"runtime_env file {path}: expected a mapping")
            return _served(data)
    raise ConfigError(f"runtime_env file {spec!r} not found (looked in {[str(c) for c in candidates]})")


def _served(runtime_env: dict[str, Any]) -> dict[str, Any]:
    from gpu_orchestrator.serve import overlay_env

    return overlay_env.overlaid(runtime_env) if overlay_env.registered() else runtime_env
