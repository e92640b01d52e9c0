"""The step after every committed job transition: one status event for watchers and one metric
(with the job's submit-to-done time when the transition ended it and the caller has its row); and
after every run whose outcome was recorded, where it ran and what it cost (`ran`).

All best effort. The job row is the truth, so a Redis outage or a slow Redis must never turn
a committed transition (a submit, a cancel, a result) into an error: `announce` never raises
(except CancelledError) and waits at most `timeout_s`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from typing import Any, Protocol

from gpu_orchestrator.bus.events import EventBusDown, reason
from gpu_orchestrator.core.jobs import Job, JobStatus
from gpu_orchestrator.store.base import Cost

log = logging.getLogger("gpu_orchestrator.transitions")


class EventSink(Protocol):
    async def publish(self, job_id: uuid.UUID | str, type: str, **data: Any) -> str: ...
    async def publish_many(self, job_id: uuid.UUID | str, events: list[tuple[str, dict[str, Any]]], *,
                           expire: bool = True) -> list[str]: ...


class JobMetrics(Protocol):
    def transition(self, app_id: str, status: JobStatus, *, new: bool = False,
                   seconds: float | None = None) -> None:
        """One call per committed transition. `new` marks a job's creation (queued for the first
        time), apart from a retry putting it back in the queue. `seconds`: for a terminal status, the
        job's time from submit to done, when known (submit_to_done_s)."""
        ...

    def ran(self, app_id: str, backend: str, outcome: JobStatus, *, usd: float = 0.0,
            gpu_seconds: float = 0.0) -> None:
        """One call per run (attempt) whose outcome was recorded: where it ran ("local" or the cloud
        backend), how it ended (succeeded or failed) and what it cost."""
        ...


def submit_to_done_s(row: Job | None, status: JobStatus) -> float | None:
    """A job's time from submit to its terminal status (created_at to finished_at, both the store's
    clock), when `status` is terminal and `row` is the job's committed terminal row; else None."""
    if row is None or not JobStatus(status).terminal or row.status != status:
        return None
    if row.created_at is None or row.finished_at is None:
        return None
    return max(0.0, (row.finished_at - row.created_at).total_seconds())


class NoMetrics:
    def transition(self, app_id: str, status: JobStatus, *, new: bool = False,
                   seconds: float | None = None) -> None:
        pass

    def ran(self, app_id: str, backend: str, outcome: JobStatus, *, usd: float = 0.0,
            gpu_seconds: float = 0.0) -> None:
        pass


class CountingMetrics:
    """In-memory metrics (tests, and a router without Ray): counts per (app_id, status, new), the
    submit-to-done times per (app_id, status), and runs per (app_id, backend, outcome) with their cost."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, bool]] = Counter()
        self.done_s: dict[tuple[str, str], list[float]] = {}
        self.runs: Counter[tuple[str, str, str]] = Counter()
        self.usd: Counter[tuple[str, str]] = Counter()
        self.gpu_seconds: Counter[tuple[str, str]] = Counter()

    def transition(self, app_id: str, status: JobStatus, *, new: bool = False,
                   seconds: float | None = None) -> None:
        status = JobStatus(status)
        self.counts[(app_id, status.value, new)] += 1
        if seconds is not None:
            self.done_s.setdefault((app_id, status.value), []).append(seconds)

    def ran(self, app_id: str, backend: str, outcome: JobStatus, *, usd: float = 0.0,
            gpu_seconds: float = 0.0) -> None:
        self.runs[(app_id, backend, JobStatus(outcome).value)] += 1
        self.usd[(app_id, backend)] += usd
        self.gpu_seconds[(app_id, backend)] += gpu_seconds

    def total(self) -> int:
        return sum(self.counts.values())


class Transitions:
    def __init__(self, events: EventSink, metrics: JobMetrics | None = None, *, timeout_s: float = 2.0):
        self.events = events
        self.metrics = metrics or NoMetrics()
        self.timeout_s = timeout_s

    async def announce(self, job_id: uuid.UUID, app_id: str, status: JobStatus, *, new: bool = False,
                       row: Job | None = None, **data: Any) -> None:
        """After `status` is committed for the job: count it, then publish `status` (with `data`:
        attempt, result, error ...) on the job's event stream. `row`: the committed row, when the
        caller has it (times a terminal transition: submit_to_done_s). Never raises."""
        status = JobStatus(status)
        self._count(job_id, app_id, status, new, row)
        # The stream's TTL is set by its first event and its last (a queued retry is neither).
        await self._publish(job_id, [(status, data)], expire=new or status.terminal)

    async def announce_started(self, job_id: uuid.UUID, app_id: str, **running: Any) -> None:
        """A job inserted running (started at submit): its creation and its start, counted as two
        transitions and published as two status events, in one round trip."""
        self._count(job_id, app_id, JobStatus.queued, True, None)
        self._count(job_id, app_id, JobStatus.running, False, None)
        await self._publish(job_id, [(JobStatus.queued, {}), (JobStatus.running, running)], expire=True)

    def _count(self, job_id: uuid.UUID, app_id: str, status: JobStatus, new: bool, row: Job | None) -> None:
        try:
            self.metrics.transition(app_id, status, new=new, seconds=submit_to_done_s(row, status))
        except Exception as e:  # a metrics backend hiccup is no reason to lose the event
            log.warning("metric for job %s -> %s not counted: %s", job_id, status.value, e)

    async def _publish(self, job_id: uuid.UUID, statuses: list[tuple[JobStatus, dict[str, Any]]], *,
                       expire: bool) -> None:
        events = [("status", {"status": st.value, **data}) for st, data in statuses]
        try:
            await asyncio.wait_for(self.events.publish_many(job_id, events, expire=expire), self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # events are lossy; watchers fall back to the job row
            # Once the bus is known down (its breaker open) a warning per job would drown the first
            # one; each dropped status event still says so, at INFO (as each job's start does).
            level = logging.INFO if isinstance(e, EventBusDown) else logging.WARNING
            log.log(level, "status event for job %s -> %s not published: %s", job_id,
                    "/".join(st.value for st, _ in statuses), reason(e))

    def ran(self, app_id: str, backend: str, outcome: JobStatus, cost: Cost | None = None) -> None:
        """After a run's outcome is recorded (the store write landed): count it where it ran, with its
        cost. Never raises."""
        try:
            self.metrics.ran(app_id, backend, JobStatus(outcome), usd=cost.usd if cost else 0.0,
                             gpu_seconds=cost.gpu_seconds if cost else 0.0)
        except Exception as e:  # a metrics backend hiccup is no reason to fail the job path
            log.warning("run of %s on %s not counted: %s", app_id, backend, e)
