"""The router deployment: the orchestrator (gpu_orchestrator/root/) built over Postgres, Redis and
Ray, serving its FastAPI app and the Python handle methods (submit, get, cancel, wait).

`Router` is undecorated; `RouterIngress` is it with a late-bound ingress (Serve calls
`__serve_build_asgi_app__` on the replica after `__init__`), and gpu_orchestrator.serve.app wraps
that with serve.deployment(...) options from the config. What the orchestrator holds (store,
dispatcher, jobs, arbiter, ...) reads through as the router's own attributes.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from fastapi import FastAPI

from gpu_orchestrator import logs
from gpu_orchestrator.core.config import OrchestratorConfig, parse_config
from gpu_orchestrator.root.postgres import on_postgres
from gpu_orchestrator.serve.backend import ServeBackend
from gpu_orchestrator.serve.cluster import RayClusterView
from gpu_orchestrator.serve.context import app_name, replica_id
from gpu_orchestrator.serve.metrics import ServeMetrics


class Router:
    def __init__(self, config: OrchestratorConfig | dict[str, Any], models: dict[str, Any], database_url: str,
                 redis_url: str, artifacts_url: str | None = None, cloud_providers: dict[str, Any] | None = None):
        cfg = config if isinstance(config, OrchestratorConfig) else parse_config(config)
        logs.configure(cfg.log_format, component="router")
        # Postgres and Redis (root/postgres.py); Ray's part: the model handles, metrics, replica states.
        self.orch = on_postgres(
            cfg, {name: ServeBackend(handle, by_value=cfg.router.model_calls == "grpc") for name, handle in models.items()},
            database_url=database_url,
            redis_url=redis_url, metrics=ServeMetrics(), cluster=RayClusterView(app_name()),
            owner=f"router:{replica_id()}:{os.getpid()}:{uuid.uuid4().hex[:8]}", board_name=app_name(),
            artifacts_url=artifacts_url, cloud_providers=cloud_providers)

    def __getattr__(self, name: str) -> Any:
        orch = self.__dict__.get("orch")  # absent while __init__ runs or after it failed
        if orch is None:
            raise AttributeError(name)
        return getattr(orch, name)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.orch.asgi()

    def _ensure_started(self) -> None:
        self.orch.start()

    def __del__(self) -> Any:
        """Serve calls this when it stops the replica gracefully (rolling update, downscale) on the
        replica's loop, and awaits what it returns: the orchestrator's shutdown. Python's garbage
        collection calls it too, outside any loop or after Serve did: then there is nothing to
        return (a coroutine nobody awaits would only warn)."""
        orch = self.__dict__.get("orch")
        if orch is None or self.__dict__.get("_closing"):
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return None
        self.__dict__["_closing"] = True
        return orch.aclose()

    # -- Python handle methods (the orchestrator's) -----------------------------------------------

    async def submit(self, app_id: str, params: dict[str, Any] | None = None, priority: int = 0,
                     idempotency_key: str | None = None, *, api_key: str | None = None, webhook: str | None = None,
                     webhook_events_filter: list[str] | None = None) -> dict[str, Any]:
        return await self.orch.submit(app_id, params, priority, idempotency_key, api_key=api_key, webhook=webhook,
                                      webhook_events_filter=webhook_events_filter)

    async def get(self, job_id: str | uuid.UUID, *, api_key: str | None = None) -> dict[str, Any]:
        return await self.orch.get(job_id, api_key=api_key)

    async def cancel(self, job_id: str | uuid.UUID, *, api_key: str | None = None) -> dict[str, Any]:
        return await self.orch.cancel(job_id, api_key=api_key)

    async def wait(self, job_id: str | uuid.UUID, timeout_s: float = 600.0, *,
                   api_key: str | None = None) -> dict[str, Any]:
        """Block until the job is terminal (or timeout_s passes) and return it. Follows the event
        stream, and the job row while Redis is unavailable."""
        return await self.orch.wait(job_id, timeout_s, api_key=api_key)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve calls this on every router replica; the arbiter leader's targets ride along to the
        application-level autoscaling policy (serve/autoscaling.py)."""
        self.orch.start()
        if self.orch.arbiter is None:
            return {}
        from gpu_orchestrator.serve import autoscaling

        return autoscaling.encode(self.orch.arbiter.snapshot, self.orch.arbiter.is_leader)

    def owner_id(self) -> str:
        return self.orch.owner

    def pid(self) -> int:
        return os.getpid()


def _ingress() -> type:
    from ray import serve

    return serve.ingress()(Router)


RouterIngress = _ingress()
