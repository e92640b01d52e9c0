"""/v1/stats: what the admin page charts. Each app's queue (depth, running, oldest wait) and the
jobs submitted per minute by their current status."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query

from gpu_orchestrator.api.deps import Jobs, scoped
from gpu_orchestrator.core.keys import Scope

router = APIRouter(tags=["workers"], dependencies=[scoped(Scope.read_all)])


@router.get("/v1/stats")
async def stats(jobs: Jobs, minutes: Annotated[int, Query(ge=1, le=1440)] = 60) -> dict[str, Any]:
    store = jobs.store
    queues, cloud, per_minute = await asyncio.gather(asyncio.to_thread(store.queue_stats),
                                                     asyncio.to_thread(store.queue_stats, cloud=True),
                                                     asyncio.to_thread(store.jobs_per_minute, minutes=minutes))
    apps: dict[str, Any] = {}
    for app_id in sorted(set(queues) | set(cloud)):
        q, c = queues.get(app_id), cloud.get(app_id)
        apps[app_id] = {"queued": q.queued if q else 0, "running": q.running if q else 0,
                        "oldest_queued_age_s": q.oldest_queued_age_s if q else None}
        if c is not None:  # jobs sent to a cloud backend, apart: they wait on the provider, not our GPUs
            apps[app_id]["cloud"] = {"queued": c.queued, "running": c.running,
                                     "oldest_queued_age_s": c.oldest_queued_age_s}
    return {
        "apps": apps,
        "jobs_per_minute": [{"minute": m.minute.isoformat(), "status": m.status.value, "count": m.count}
                            for m in per_minute],
        "minutes": minutes,
    }
