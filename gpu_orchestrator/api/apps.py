"""/v1/apps: the configured apps and their parameter schemas."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gpu_orchestrator.api.deps import AUTHENTICATED, Jobs

router = APIRouter(tags=["apps"], dependencies=[AUTHENTICATED])


@router.get("/v1/apps")
async def apps(jobs: Jobs) -> dict[str, Any]:
    models = jobs.cfg.models
    # vram_gb is declared once, on the model deployment; each app shows its model's (0 for cloud apps).
    return {"apps": [{**a.model_dump(mode="json"),
                      "vram_gb": models[a.deployment].vram_gb if a.deployment in models else 0.0}
                     for a in jobs.apps.values()]}
