"""Postgres job statements over many jobs: which apps have queued jobs, the queue's stats, jobs per
minute, service times, the cost summary; and retention (prune, prunable). A mixin of
PostgresJobStore (store/postgres.py)."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gpu_orchestrator.core.artifact_refs import artifact_uris
from gpu_orchestrator.core.jobs import JobStatus
from gpu_orchestrator.store.base import AppQueueStats, CostRow, MinuteCount, Pruned
from gpu_orchestrator.store.pg_engine import fresh_on_stale
from gpu_orchestrator.store.pg_sql import PRUNE_LOCK


class PgReports:
    engine: Engine  # set by PostgresJobStore

    # -- reports ----------------------------------------------------------------------------------

    @fresh_on_stale
    def apps_with_queued(self) -> dict[str, set[str | None]]:
        """Apps with at least one queued job, each with the routes its queued jobs wait on (None:
        local; a skip scan over the partial queued index)."""
        out: dict[str, set[str | None]] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(sa.text("SELECT DISTINCT app_id, route FROM jobs WHERE status = 'queued'")):
                out.setdefault(r.app_id, set()).add(r.route)
        return out

    @fresh_on_stale
    def cost_summary(self, *, since: dt.datetime, until: dt.datetime, app_id: str | None = None,
                     group_by: str = "backend") -> list[CostRow]:
        key = {"backend": "coalesce(route, 'local')", "app": "app_id",
               "day": "to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"}[group_by]
        sql = (f"SELECT {key} AS k, count(*) AS n, count(*) FILTER (WHERE route IS NOT NULL) AS cloud, "
               f"coalesce(sum(gpu_seconds), 0) AS gs, coalesce(sum(cost_usd), 0) AS usd FROM jobs "
               f"WHERE finished_at IS NOT NULL AND finished_at >= :since AND finished_at < :until")
        if app_id is not None:
            sql += " AND app_id = :app"
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(sql + " GROUP BY 1 ORDER BY 1"), {"since": since, "until": until, "app": app_id})
            return [CostRow(r.k, r.n, r.cloud, float(r.gs), float(r.usd)) for r in rows]

    @fresh_on_stale
    def queue_stats(self, *, cloud: bool = False, app_id: str | None = None) -> dict[str, AppQueueStats]:
        # Local demand by default (the arbiter's): jobs sent to a cloud backend ask nothing of our GPUs.
        sql = sa.text(
            "SELECT app_id, count(*) FILTER (WHERE status = 'queued') AS queued, "
            "count(*) FILTER (WHERE status = 'running') AS running, "
            "extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'queued')) AS oldest, "
            "max(priority) FILTER (WHERE status = 'queued') AS maxprio "
            f"FROM jobs WHERE status IN ('queued', 'running') AND route IS {'NOT ' if cloud else ''}NULL "
            f"{'AND app_id = :app ' if app_id is not None else ''}GROUP BY app_id"
        )
        with self.engine.connect() as conn:
            return {
                r.app_id: AppQueueStats(r.app_id, r.queued, r.running, float(r.oldest) if r.oldest is not None else None, r.maxprio)
                for r in conn.execute(sql, {"app": app_id})
            }

    @fresh_on_stale
    def jobs_per_minute(self, *, minutes: int) -> list[MinuteCount]:
        # A range scan of jobs_list_idx (created_at): the last hour, whatever the table's size.
        sql = sa.text(
            "SELECT date_trunc('minute', created_at) AS m, status, count(*) AS n FROM jobs "
            "WHERE created_at > now() - make_interval(mins => :m) GROUP BY 1, 2 ORDER BY 1, 2"
        )
        with self.engine.connect() as conn:
            return [MinuteCount(r.m, JobStatus(r.status), r.n) for r in conn.execute(sql, {"m": minutes})]

    @fresh_on_stale
    def service_times(self, *, window_s: float = 3600.0) -> dict[str, float]:
        """Mean run time (started -> finished) of each app's recently succeeded jobs, in seconds."""
        sql = sa.text(
            "SELECT app_id, avg(extract(epoch FROM finished_at - started_at)) AS s FROM jobs "
            "WHERE status = 'succeeded' AND route IS NULL AND finished_at > now() - make_interval(secs => :w) GROUP BY app_id"
        )
        with self.engine.connect() as conn:
            return {r.app_id: float(r.s) for r in conn.execute(sql, {"w": window_s}) if r.s is not None}

    # -- retention --------------------------------------------------------------------------------

    _PRUNABLE = ("finished_at IS NOT NULL AND finished_at < now() - make_interval(secs => :age) "
                 "AND status IN ('succeeded', 'failed', 'cancelled')")
    # The batch: the oldest such rows, skipping any another transaction holds.
    PRUNE_PICK = f"SELECT id FROM jobs WHERE {_PRUNABLE} ORDER BY finished_at LIMIT :n FOR UPDATE SKIP LOCKED"

    def prune(self, *, older_than_s: float, limit: int) -> list[Pruned] | None:
        """Delete up to `limit` terminal jobs finished more than `older_than_s` ago, oldest first, in
        one short transaction (a range scan of jobs_finished_idx; rows another transaction holds are
        skipped, never waited for). One pruner at a time across router replicas (a transaction-level
        advisory lock): None when another holds it."""
        with self.engine.begin() as conn:
            if not conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": PRUNE_LOCK}).scalar():
                return None
            rows = conn.execute(sa.text(
                f"DELETE FROM jobs WHERE id IN ({self.PRUNE_PICK}) RETURNING id, app_id, params, result"),
                {"age": older_than_s, "n": limit}).all()
            # Result grants go with their job (ON DELETE CASCADE); an upload's grant with its file.
            uploads = sorted({u for r in rows for u in artifact_uris(r.params)})
            if uploads:
                conn.execute(sa.text("DELETE FROM artifact_owners WHERE uri = ANY(CAST(:u AS text[]))"), {"u": uploads})
        return [Pruned(r.id, r.app_id, r.params or {}, r.result) for r in rows]

    @fresh_on_stale
    def prunable(self, *, older_than_s: float) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT app_id, count(*) AS n FROM jobs WHERE {self._PRUNABLE} GROUP BY app_id"),
                                {"age": older_than_s})
            return {r.app_id: r.n for r in rows}
