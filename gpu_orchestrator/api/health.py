"""/healthz."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gpu_orchestrator.api.deps import Jobs

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(jobs: Jobs) -> JSONResponse:
    """What is down, by a short reason ("connection refused", "timeout"), never the raw error.
    503 when the database is down (nothing works without it); Redis down is "degraded": jobs
    still run, only live progress events are lost."""
    checks, reasons = await jobs.health()
    ok = all(v == "ok" for v in checks.values())
    content: dict[str, Any] = {"status": "ok" if ok else "degraded", **checks}
    if reasons:
        content["reasons"] = reasons
    return JSONResponse(status_code=503 if checks["database"] != "ok" else 200, content=content)
