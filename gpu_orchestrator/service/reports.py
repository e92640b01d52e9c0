"""What the admin page and `/v1/stats`, `/v1/costs` report: queues, jobs per minute, and what
finished jobs cost, read from the store through its narrow port (store.base.JobReports) (the HTTP layer asks this
service, never the store)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from gpu_orchestrator.core.costs import CostsSpec
from gpu_orchestrator.store.base import JobReports


class Reports:
    def __init__(self, store: JobReports, prices: CostsSpec):
        self.store = store
        self.prices = prices  # the config's cost settings: their source is named in every answer

    async def stats(self, minutes: int) -> dict[str, Any]:
        """Each app's local queue (and its cloud-routed jobs apart), and jobs submitted per minute
        by their current status."""
        queues, cloud, per_minute = await asyncio.gather(
            asyncio.to_thread(self.store.queue_stats), asyncio.to_thread(self.store.queue_stats, cloud=True),
            asyncio.to_thread(self.store.jobs_per_minute, minutes=minutes))
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

    async def costs(self, *, since: dt.datetime, until: dt.datetime, app_id: str | None,
                    group_by: str) -> dict[str, Any]:
        """Finished jobs' cost in [since, until), grouped; totals local vs cloud."""
        groups, by_backend = await asyncio.gather(
            asyncio.to_thread(self.store.cost_summary, since=since, until=until, app_id=app_id, group_by=group_by),
            asyncio.to_thread(self.store.cost_summary, since=since, until=until, app_id=app_id, group_by="backend"))
        n = sum(r.jobs for r in by_backend)
        cloud = sum(r.cloud_jobs for r in by_backend)
        local_usd = sum(r.usd for r in by_backend if r.key == "local")
        total_usd = sum(r.usd for r in by_backend)
        return {
            "since": since.isoformat(), "until": until.isoformat(), "app_id": app_id, "group_by": group_by,
            "groups": [{"key": r.key, "jobs": r.jobs, "cloud_jobs": r.cloud_jobs,
                        "gpu_seconds": round(r.gpu_seconds, 6), "usd": round(r.usd, 8)} for r in groups],
            "total": {"jobs": n, "cloud_jobs": cloud, "gpu_seconds": round(sum(r.gpu_seconds for r in by_backend), 6),
                      "usd": round(total_usd, 8), "local_usd": round(local_usd, 8),
                      "cloud_usd": round(total_usd - local_usd, 8)},
            "cloud_share": round(cloud / n, 6) if n else 0.0,
            "prices": self.prices.source,
        }
