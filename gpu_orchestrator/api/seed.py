"""Seed-compatible aliases: the original Go orchestrator's paths and shapes."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from gpu_orchestrator.api.deps import CallerDep, FleetDep, IdempotencyKey, Jobs, scoped
from gpu_orchestrator.api.jobs import SubmitRequest
from gpu_orchestrator.core.keys import Scope
from gpu_orchestrator.service.fleet import seed_workers

router = APIRouter(tags=["seed-compatible"])


@router.post("/submit", status_code=202)
async def submit(req: SubmitRequest, jobs: Jobs, caller: CallerDep, idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    job, _ = await jobs.submit(req.app_id, req.params, req.priority, idempotency_key, caller)
    return {"job_id": str(job.id), "status": job.status.value}


@router.get("/status/{job_id}")
async def status(job_id: uuid.UUID, jobs: Jobs, caller: CallerDep) -> dict[str, Any]:
    j = (await jobs.get(job_id, caller)).to_api()
    return {k: j[k] for k in ("job_id", "app_id", "status", "result", "error", "created_at", "finished_at")}


@router.get("/workers", dependencies=[scoped(Scope.admin)])
async def workers(fleet: FleetDep) -> dict[str, Any]:
    return seed_workers(await fleet.models())
