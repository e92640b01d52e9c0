"""/v1/apps: the configured apps and their parameter schemas."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gpu_orchestrator.api.deps import Jobs

router = APIRouter(tags=["apps"])


@router.get("/v1/apps")
async def apps(jobs: Jobs) -> dict[str, Any]:
    return {"apps": [a.model_dump(mode="json") for a in jobs.apps.values()]}
