"""Builds the orchestrator application: the router plus one deployment per model.

`import_path: serve_apps.orchestrator:build_app` in serve_config.yaml; the same function from Python:
`serve.run(build_app(args))`. Deployment classes stay undecorated; options come from the config.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from gpu_orchestrator.config import ConfigError, OrchestratorConfig, load_runtime_env, parse_config
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


def model_deployments(cfg: OrchestratorConfig, redis_url: str, base_dir: Path | None = None) -> dict[str, Any]:
    out = {}
    for name, m in cfg.models.items():
        cls = import_attr(m.impl)
        actor_opts: dict[str, Any] = {"num_cpus": m.num_cpus, "num_gpus": m.num_gpus}
        runtime_env = load_runtime_env(m.runtime_env, base_dir)
        if runtime_env:
            actor_opts["runtime_env"] = runtime_env
        dep = serve.deployment(
            cls,
            name=name,
            num_replicas=m.num_replicas,
            max_ongoing_requests=m.max_ongoing_requests,
            ray_actor_options=actor_opts,
        )
        out[name] = dep.bind(**m.init, redis_url=redis_url)
    return out


def build_app(args: dict[str, Any]) -> Application:
    cfg = parse_config(args)
    db, redis = resolve_urls(cfg)
    from deployments.router import RouterIngress

    models = model_deployments(cfg, redis)
    router = serve.deployment(
        RouterIngress,
        name=ROUTER_NAME,
        num_replicas=cfg.router.num_replicas,
        max_ongoing_requests=cfg.router.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.router.num_cpus},
    )
    return router.bind(cfg.model_dump(mode="json", exclude={"database_url", "redis_url"}), models, db, redis)
