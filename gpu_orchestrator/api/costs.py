"""/v1/costs: what finished jobs cost, local vs cloud, grouped by backend, app or day."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from gpu_orchestrator.api.deps import Jobs, scoped
from gpu_orchestrator.core.keys import Scope
from gpu_orchestrator.core.jobs import InvalidRequest

router = APIRouter(tags=["costs"], dependencies=[scoped(Scope.admin)])


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


@router.get("/v1/costs")
async def costs(
    jobs: Jobs,
    since: Annotated[dt.datetime | None, Query(description="ISO time; default: 30 days before `until`")] = None,
    until: Annotated[dt.datetime | None, Query(description="ISO time; default: now")] = None,
    app_id: Annotated[str | None, Query(max_length=64)] = None,
    group_by: Literal["backend", "app", "day"] = "backend",
) -> dict[str, Any]:
    until = _utc(until or dt.datetime.now(dt.timezone.utc))
    since = _utc(since or until - dt.timedelta(days=30))
    if since >= until:
        raise InvalidRequest("since", f"must be before until ({until.isoformat()})")
    store = jobs.store
    groups, by_backend = await asyncio.gather(
        asyncio.to_thread(store.cost_summary, since=since, until=until, app_id=app_id, group_by=group_by),
        asyncio.to_thread(store.cost_summary, since=since, until=until, app_id=app_id, group_by="backend"))
    n = sum(r.jobs for r in by_backend)
    cloud = sum(r.cloud_jobs for r in by_backend)
    local_usd = sum(r.usd for r in by_backend if r.key == "local")
    total_usd = sum(r.usd for r in by_backend)
    return {
        "since": since.isoformat(), "until": until.isoformat(), "app_id": app_id, "group_by": group_by,
        "groups": [{"key": r.key, "jobs": r.jobs, "cloud_jobs": r.cloud_jobs, "gpu_seconds": round(r.gpu_seconds, 6),
                    "usd": round(r.usd, 8)} for r in groups],
        "total": {"jobs": n, "cloud_jobs": cloud, "gpu_seconds": round(sum(r.gpu_seconds for r in by_backend), 6),
                  "usd": round(total_usd, 8), "local_usd": round(local_usd, 8),
                  "cloud_usd": round(total_usd - local_usd, 8)},
        "cloud_share": round(cloud / n, 6) if n else 0.0,
        "prices": jobs.cfg.costs.source,
    }
