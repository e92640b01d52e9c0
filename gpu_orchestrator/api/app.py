"""The FastAPI app factory: one router per resource over a JobService and a Fleet; domain errors
mapped to HTTP in api/errors.py; limits from the arguments (see Limits)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from gpu_orchestrator.api import apps as apps_api
from gpu_orchestrator.api import artifacts as artifacts_api
from gpu_orchestrator.api import costs as costs_api
from gpu_orchestrator.api import health as health_api
from gpu_orchestrator.api import jobs as jobs_api
from gpu_orchestrator.api import keys as keys_api
from gpu_orchestrator.api import openai as openai_api
from gpu_orchestrator.api import openai_media as openai_media_api
from gpu_orchestrator.api import retention as retention_api
from gpu_orchestrator.api import seed as seed_api
from gpu_orchestrator.api import workers as workers_api
from gpu_orchestrator.api import stats as stats_api
from gpu_orchestrator.api import webhooks as webhooks_api
from gpu_orchestrator.api.errors import BodyLimit, install
from gpu_orchestrator.api.limits import Limits
from gpu_orchestrator.api.openai_errors import OpenAIErrors
from gpu_orchestrator.api.streams import Streams
from gpu_orchestrator.store.artifacts import ArtifactStore
from gpu_orchestrator.service.fleet import Fleet
from gpu_orchestrator.service.jobs import JobService
from gpu_orchestrator.service.auth import OPEN_AUTH, Auth
from gpu_orchestrator.service.reports import Reports
from gpu_orchestrator.service.retention import Retention
from gpu_orchestrator.service.webhooks import WebhookSender

ROUTERS = (jobs_api, artifacts_api, apps_api, workers_api, stats_api, costs_api, health_api, openai_api,
           openai_media_api, seed_api,
           retention_api, keys_api, webhooks_api)


def create_app(*, jobs: JobService, fleet: Fleet, artifacts: ArtifactStore | None = None,
               limits: Limits | None = None, retention: Retention | None = None, auth: Auth | None = None,
               reports: Reports, webhooks: WebhookSender | None = None) -> FastAPI:
    """The app's dependencies live on `app.state` (read by api/deps.py): jobs, fleet, artifacts,
    limits (mutable: read per request), streams (open long-lived responses), retention, auth
    (API keys; default: open, no keys) and reports (stats and costs)."""
    limits = limits or Limits()
    app = FastAPI(
        title="GPU Orchestrator",
        description="Jobs for many AI models on shared GPUs. Submit, watch progress (SSE), cancel.",
        version="0.1.0",
        docs_url=None,  # served below from the package: FastAPI's default loads Swagger UI from a CDN
        redoc_url=None,
    )
    _offline_docs(app)
    app.state.jobs = jobs
    app.state.fleet = fleet
    app.state.artifacts = artifacts
    app.state.limits = limits
    app.state.streams = Streams(limits)
    app.state.retention = retention
    app.state.reports = reports
    app.state.auth = auth or OPEN_AUTH
    app.state.webhooks = webhooks
    app.add_middleware(BodyLimit, limit=lambda: limits.max_body_bytes, upload_limit=lambda: limits.max_upload_bytes,
                       upload_paths=artifacts_api.UPLOAD_PATHS + openai_media_api.UPLOAD_PATHS)
    app.add_middleware(OpenAIErrors)  # outermost: reshapes the body limit's 413 too
    install(app)
    for module in ROUTERS:
        app.include_router(module.router)
    return app


SWAGGER_UI = Path(__file__).parent / "static" / "swagger-ui"


def _offline_docs(app: FastAPI) -> None:
    """/docs with Swagger UI's files served by the router itself, so it renders with no internet."""
    app.mount("/static/swagger-ui", StaticFiles(directory=SWAGGER_UI), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a path prefix, links keep it
        return get_swagger_ui_html(openapi_url=root + (app.openapi_url or "/openapi.json"), title=f"{app.title} - API",
                                   swagger_js_url=f"{root}/static/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}/static/swagger-ui/swagger-ui.css",
                                   swagger_favicon_url=f"{root}/static/swagger-ui/favicon-32x32.png")
