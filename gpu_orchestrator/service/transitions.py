"""The step after every committed job transition: one status event for watchers and one metric.

Both are best effort. The job row is the truth, so a Redis outage or a slow Redis must never turn
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
from gpu_orchestrator.core.jobs import JobStatus

log = logging.getLogger("gpu_orchestrator.transitions")


class EventSink(Protocol):
    async def publish(self, job_id: uuid.UUID | str, type: str, **data: Any) -> str: ...


class JobMetrics(Protocol):
    """One call per committed transition. `new` marks a job's creation (queued for the first time),
    apart from a retry putting it back in the queue."""

    def transition(self, app_id: str, status: JobStatus, *, new: bool = False) -> None: ...


class NoMetrics:
    def transition(self, app_id: str, status: JobStatus, *, new: bool = False) -> None:
        pass


class CountingMetrics:
    """In-memory metrics (tests, and a router without Ray): counts per (app_id, status, new)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, bool]] = Counter()

    def transition(self, app_id: str, status: JobStatus, *, new: bool = False) -> None:
        self.counts[(app_id, JobStatus(status).value, new)] += 1

    def total(self) -> int:
        return sum(self.counts.values())


class Transitions:
    def __init__(self, events: EventSink, metrics: JobMetrics | None = None, *, timeout_s: float = 2.0):
        self.events = events
        self.metrics = metrics or NoMetrics()
        self.timeout_s = timeout_s

    async def announce(self, job_id: uuid.UUID, app_id: str, status: JobStatus, *, new: bool = False,
                       **data: Any) -> None:
        """After `status` is committed for the job: count it, then publish `status` (with `data`:
        attempt, result, error ...) on the job's event stream. Never raises."""
        status = JobStatus(status)
        try:
            self.metrics.transition(app_id, status, new=new)
        except Exception as e:  # a metrics backend hiccup is no reason to lose the event
            log.warning("metric for job %s -> %s not counted: %s", job_id, status.value, e)
        try:
            await asyncio.wait_for(self.events.publish(job_id, "status", status=status.value, **data), self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # events are lossy; watchers fall back to the job row
            # Once the bus is known down (its breaker open), one line per job would flood the log.
            level = logging.DEBUG if isinstance(e, EventBusDown) else logging.WARNING
            log.log(level, "status event for job %s -> %s not published: %s", job_id, status.value, reason(e))
