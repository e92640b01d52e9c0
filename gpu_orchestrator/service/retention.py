"""Retention: terminal jobs older than the configured age go, with the artifacts their params and
results name and their event streams, in small batches that never hold up intake.

Every router replica runs the loop; the store lets one prune at a time (the others skip that
round). Rows go first, then what they named: an artifact or a stream left by a crash between the
two is an orphan that costs space, never a job that points at nothing. Artifacts belong to one job
(uploads get their own id; an Idempotency-Key reuses it for the same request only).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from gpu_orchestrator.core.artifact_refs import artifact_uris
from gpu_orchestrator.store.base import JobRetention, Pruned

log = logging.getLogger("gpu_orchestrator.retention")

DAY_S = 86_400.0


class ArtifactRemover(Protocol):
    def delete_many(self, uris: list[str]) -> int: ...


class StreamRemover(Protocol):
    async def forget(self, job_ids: list[uuid.UUID]) -> int: ...


@dataclass
class PruneReport:
    older_than_s: float
    dry_run: bool
    jobs: int = 0
    artifacts: int = 0
    streams: int = 0
    batches: int = 0
    by_app: dict[str, int] = field(default_factory=dict)
    busy: bool = False  # another replica was pruning: nothing done here

    def to_api(self) -> dict[str, Any]:
        return {"older_than_days": round(self.older_than_s / DAY_S, 6), "dry_run": self.dry_run, "jobs": self.jobs,
                "artifacts": None if self.dry_run else self.artifacts, "event_streams": self.streams, "batches": self.batches,
                "by_app": dict(sorted(self.by_app.items())), "busy": self.busy}


class Retention:
    PAUSE_S = 0.05  # between batches: intake's statements get the table between two deletes

    def __init__(self, *, store: JobRetention, artifacts: ArtifactRemover | None, streams: StreamRemover,
                 retention_days: float | None, batch: int = 500, interval_s: float = 600.0):
        self.store = store
        self.artifacts = artifacts
        self.streams = streams
        self.retention_days = retention_days
        self.batch = batch
        self.interval_s = interval_s
        self._task: asyncio.Task | None = None
        self.last: PruneReport | None = None

    async def prune(self, older_than_s: float, *, dry_run: bool = False) -> PruneReport:
        """Delete terminal jobs finished more than older_than_s ago, batch by batch until none is
        left. dry_run: how many there are, by app (artifacts are counted only as they go)."""
        report = PruneReport(older_than_s, dry_run)
        if dry_run:
            report.by_app = await asyncio.to_thread(self.store.prunable, older_than_s=older_than_s)
            report.jobs = sum(report.by_app.values())
            return report
        while True:
            rows = await asyncio.to_thread(self.store.prune, older_than_s=older_than_s, limit=self.batch)
            if rows is None:  # another replica is pruning
                report.busy = report.batches == 0
                break
            if not rows:
                break
            report.batches += 1
            await self._tidy(rows, report)
            if len(rows) < self.batch:
                break
            await asyncio.sleep(self.PAUSE_S)
        return report

    async def _tidy(self, rows: list[Pruned], report: PruneReport) -> None:
        report.jobs += len(rows)
        for r in rows:
            report.by_app[r.app_id] = report.by_app.get(r.app_id, 0) + 1
        uris = sorted({u for r in rows for u in (*artifact_uris(r.params), *artifact_uris(r.result))})
        if uris and self.artifacts is not None:
            report.artifacts += await asyncio.to_thread(self.artifacts.delete_many, uris)
        try:
            report.streams += await self.streams.forget([r.job_id for r in rows])
        except Exception as e:  # they expire on their own (events.ttl_s)
            log.info("event streams of %d pruned jobs left to expire: %s", len(rows), e)

    # -- the background loop ----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None and self.retention_days is not None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _loop(self) -> None:
        assert self.retention_days is not None
        while True:
            await asyncio.sleep(self.interval_s)
            t0 = time.monotonic()
            try:
                report = await self.prune(self.retention_days * DAY_S)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the database away: next round
                log.warning("retention round failed: %s", e)
                continue
            self.last = report
            if report.jobs:
                log.info("retention: %d job(s) older than %g days deleted (%d artifacts, %d stream keys) in %.1f s",
                         report.jobs, self.retention_days, report.artifacts, report.streams, time.monotonic() - t0)
