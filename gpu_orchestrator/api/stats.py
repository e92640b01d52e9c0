"""/v1/stats: what the admin page charts. Each app's queue (depth, running, oldest wait) and the
jobs submitted per minute by their current status."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from gpu_orchestrator.api.deps import ReportsDep, scoped
from gpu_orchestrator.core.keys import Scope

router = APIRouter(tags=["workers"], dependencies=[scoped(Scope.read_all)])


@router.get("/v1/stats")
async def stats(reports: ReportsDep, minutes: Annotated[int, Query(ge=1, le=1440)] = 60) -> dict[str, Any]:
    return await reports.stats(minutes)
