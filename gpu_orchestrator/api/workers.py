"""/v1/workers: per model deployment, its state, replicas, queue and the arbiter's view."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gpu_orchestrator.api.deps import FleetDep, scoped
from gpu_orchestrator.core.keys import Scope

router = APIRouter(tags=["workers"], dependencies=[scoped(Scope.admin)])


@router.get("/v1/workers")
async def workers(fleet: FleetDep) -> dict[str, Any]:
    return await fleet.view()
