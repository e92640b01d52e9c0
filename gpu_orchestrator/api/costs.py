"""/v1/costs: what finished jobs cost, local vs cloud, grouped by backend, app or day."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from gpu_orchestrator.api.deps import ReportsDep, scoped
from gpu_orchestrator.core.keys import Scope
from gpu_orchestrator.core.jobs import InvalidRequest

router = APIRouter(tags=["costs"], dependencies=[scoped(Scope.admin)])


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


@router.get("/v1/costs")
async def costs(
    reports: ReportsDep,
    since: Annotated[dt.datetime | None, Query(description="ISO time; default: 30 days before `until`")] = None,
    until: Annotated[dt.datetime | None, Query(description="ISO time; default: now")] = None,
    app_id: Annotated[str | None, Query(max_length=64)] = None,
    group_by: Literal["backend", "app", "day"] = "backend",
) -> dict[str, Any]:
    until = _utc(until or dt.datetime.now(dt.timezone.utc))
    since = _utc(since or until - dt.timedelta(days=30))
    if since >= until:
        raise InvalidRequest("since", f"must be before until ({until.isoformat()})")
    return await reports.costs(since=since, until=until, app_id=app_id, group_by=group_by)
