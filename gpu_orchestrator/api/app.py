"""The FastAPI app factory: one router per resource over a JobService and a Fleet; domain errors
mapped to HTTP in api/errors.py; limits from the arguments (see Limits)."""

from __future__ import annotations

from fastapi import FastAPI

from gpu_orchestrator.api import apps as apps_api
from gpu_orchestrator.api import artifacts as artifacts_api
from gpu_orchestrator.api import costs as costs_api
from gpu_orchestrator.api import health as health_api
from gpu_orchestrator.api import jobs as jobs_api
from gpu_orchestrator.api import openai as openai_api
from gpu_orchestrator.api import retention as retention_api
from gpu_orchestrator.api import seed as seed_api
from gpu_orchestrator.api import workers as workers_api
from gpu_orchestrator.api import stats as stats_api
from gpu_orchestrator.api.errors import BodyLimit, install
from gpu_orchestrator.api.limits import Limits
from gpu_orchestrator.api.streams import Streams
from gpu_orchestrator.artifacts import ArtifactStore
from gpu_orchestrator.service.fleet import Fleet
from gpu_orchestrator.service.jobs import JobService
from gpu_orchestrator.service.retention import Retention

ROUTERS = (jobs_api, artifacts_api, apps_api, workers_api, stats_api, costs_api, health_api, openai_api, seed_api,
           retention_api)


def create_app(*, jobs: JobService, fleet: Fleet, artifacts: ArtifactStore | None = None,
               limits: Limits | None = None, retention: Retention | None = None) -> FastAPI:
    """The app's dependencies live on `app.state` (read by api/deps.py): jobs, fleet, artifacts,
    limits (mutable: read per request), streams (open long-lived responses) and retention."""
    limits = limits or Limits()
    app = FastAPI(
        title="GPU Orchestrator",
        description="Jobs for many AI models on shared GPUs. Submit, watch progress (SSE), cancel.",
        version="0.1.0",
    )
    app.state.jobs = jobs
    app.state.fleet = fleet
    app.state.artifacts = artifacts
    app.state.limits = limits
    app.state.streams = Streams(limits)
    app.state.retention = retention
    app.add_middleware(BodyLimit, limit=lambda: limits.max_body_bytes, upload_limit=lambda: limits.max_upload_bytes,
                       upload_paths=artifacts_api.UPLOAD_PATHS)
    install(app)
    for module in ROUTERS:
        app.include_router(module.router)
    return app
