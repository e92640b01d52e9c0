"""The in-memory store's reads over many jobs: which apps have queued jobs, the queue's stats, jobs
per minute, service times, the cost summary; and retention (prune, prunable). A mixin of
MemoryJobStore (store/memory.py), as store/pg_reports.py is of the Postgres one."""

from __future__ import annotations

import collections
import datetime as dt
import uuid
from typing import Callable, ContextManager

from gpu_orchestrator.core.jobs import Job, JobStatus
from gpu_orchestrator.store.base import AppQueueStats, CostRow, MinuteCount, Pruned
from gpu_orchestrator.store.memory_rows import Q, R, _secs


class MemoryReports:
    # MemoryJobStore's (store/memory.py):
    _jobs: dict[uuid.UUID, Job]  # its rows, in creation order
    _tx: Callable[[], ContextManager[dt.datetime]]  # one "transaction", reading one `now`
    _hashes: dict[uuid.UUID, str]  # each job's request fingerprint

    def apps_with_queued(self) -> dict[str, set[str | None]]:
        with self._tx():
            out: dict[str, set[str | None]] = {}
            for j in self._jobs.values():
                if j.status == Q:
                    out.setdefault(j.app_id, set()).add(j.route)
            return out

    def queue_stats(self, *, cloud: bool = False, app_id: str | None = None) -> dict[str, AppQueueStats]:
        with self._tx() as now:
            out = {}
            local = [j for j in self._jobs.values() if j.status in (Q, R) and (j.route is not None) == cloud
                     and (app_id is None or j.app_id == app_id)]
            for app in {j.app_id for j in local}:
                queued = [j for j in local if j.app_id == app and j.status == Q]
                running = sum(1 for j in local if j.app_id == app and j.status == R)
                oldest = (now - min(j.created_at for j in queued)).total_seconds() if queued else None
                out[app] = AppQueueStats(app, len(queued), running, oldest,
                                         max(j.priority for j in queued) if queued else None)
            return out

    def jobs_per_minute(self, *, minutes: int) -> list[MinuteCount]:
        with self._tx() as now:
            counts: dict[tuple[dt.datetime, JobStatus], int] = {}
            for j in self._jobs.values():
                if j.created_at > now - _secs(60 * minutes):
                    key = (j.created_at.replace(second=0, microsecond=0), j.status)
                    counts[key] = counts.get(key, 0) + 1
            return [MinuteCount(m, st, n) for (m, st), n in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1].value))]

    def service_times(self, *, window_s: float = 3600.0) -> dict[str, float]:
        with self._tx() as now:
            runs: dict[str, list[float]] = {}
            for j in self._jobs.values():
                if j.status == JobStatus.succeeded and j.route is None and j.finished_at > now - _secs(window_s):
                    runs.setdefault(j.app_id, []).append((j.finished_at - j.started_at).total_seconds())
            return {app: sum(v) / len(v) for app, v in runs.items()}

    def cost_summary(self, *, since: dt.datetime, until: dt.datetime, app_id: str | None = None,
                     group_by: str = "backend") -> list[CostRow]:
        key = {"backend": lambda j: j.route or "local", "app": lambda j: j.app_id,
               "day": lambda j: j.finished_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d")}[group_by]
        groups: dict[str, list[Job]] = {}
        with self._tx():
            for j in self._jobs.values():
                if j.finished_at is not None and since <= j.finished_at < until and app_id in (None, j.app_id):
                    groups.setdefault(key(j), []).append(j)
        return [CostRow(k, len(js), sum(1 for j in js if j.route), sum(j.gpu_seconds or 0.0 for j in js),
                        sum(j.cost_usd or 0.0 for j in js)) for k, js in sorted(groups.items())]

    def _prunable(self, older_than_s: float, now: dt.datetime) -> list[Job]:
        cutoff = now - dt.timedelta(seconds=older_than_s)
        return sorted((j for j in self._jobs.values() if j.status.terminal and j.finished_at is not None
                       and j.finished_at < cutoff), key=lambda j: j.finished_at)

    def prune(self, *, older_than_s: float, limit: int) -> list[Pruned] | None:
        with self._tx() as now:
            old = self._prunable(older_than_s, now)[:limit]
            for j in old:
                del self._jobs[j.id]
                self._hashes.pop(j.id, None)
            return [Pruned(j.id, j.app_id, j.params, j.result) for j in old]

    def prunable(self, *, older_than_s: float) -> dict[str, int]:
        with self._tx() as now:
            return dict(collections.Counter(j.app_id for j in self._prunable(older_than_s, now)))
