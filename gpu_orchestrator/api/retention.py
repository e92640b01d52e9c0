"""/v1/admin/prune: delete terminal jobs older than an age now, with their artifacts and event
streams (`gpu-orch prune`). The router also does it on its own every router.prune_interval_s."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from gpu_orchestrator.api.deps import RetentionDep, scoped
from gpu_orchestrator.core.keys import Scope
from gpu_orchestrator.api.errors import ApiError
from gpu_orchestrator.core.jobs import InvalidRequest
from gpu_orchestrator.service.retention import DAY_S

router = APIRouter(tags=["admin"], dependencies=[scoped(Scope.admin)])


class PruneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    older_than_days: float | None = Field(default=None, gt=0, le=36_500,
                                          description="jobs finished longer ago than this; default: router.retention_days")
    dry_run: bool = Field(default=False, description="count what would go, by app; delete nothing")


@router.post("/v1/admin/prune")
async def prune(req: PruneRequest, retention: RetentionDep) -> dict[str, Any]:
    """Terminal jobs (succeeded, failed, cancelled) finished more than `older_than_days` ago are
    deleted in batches, with the artifacts their params and results name and their event streams.
    Queued and running jobs are never touched. Answers with what went (`busy`: another router was
    pruning at that moment; nothing was done here)."""
    if retention is None:
        raise ApiError(503, "no_retention", "this router has no retention service")
    days = req.older_than_days or retention.retention_days
    if days is None:
        raise InvalidRequest("older_than_days", "is required: this stack keeps jobs for ever (router.retention_days is null)")
    return (await retention.prune(days * DAY_S, dry_run=req.dry_run)).to_api()
