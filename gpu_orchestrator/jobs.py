"""Jobs and their state machine. Pure: no I/O.

    queued --claim--> running --complete--> succeeded
      ^                  |  \--fail, attempts spent / not retryable--> failed
      |                  |
      +--fail/lease expired, attempts left--+
    queued|running --cancel--> cancelled

The store enforces each arrow in SQL (UPDATE ... WHERE status IN (...)); TRANSITIONS documents them
and lets the pure tests check the store against the diagram.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from enum import Enum
from typing import Any


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.cancelled, JobStatus.failed}),
    JobStatus.running: frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.queued, JobStatus.cancelled}),
    JobStatus.succeeded: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.cancelled: frozenset(),
}


def can_transition(src: JobStatus, dst: JobStatus) -> bool:
    return dst in TRANSITIONS[src]


class JobError(Exception):
    pass


class JobNotFound(JobError):
    def __init__(self, job_id: uuid.UUID | str):
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class TransitionError(JobError):
    """A guarded UPDATE matched zero rows: the job was not in a state that allows the change."""

    def __init__(self, job_id: uuid.UUID | str, current: str | None, wanted: str):
        super().__init__(f"job {job_id} is {current or 'missing'}; cannot {wanted}")
        self.job_id = job_id
        self.current = current
        self.wanted = wanted


class QueueFull(JobError):
    def __init__(self, app_id: str, depth: int, retry_after_s: int):
        super().__init__(f"queue for app {app_id!r} is full ({depth} queued); retry later")
        self.app_id = app_id
        self.depth = depth
        self.retry_after_s = retry_after_s


class IdempotencyConflict(JobError):
    """An Idempotency-Key was reused for a different request (another body for the same app)."""

    def __init__(self, app_id: str, key: str, job_id: uuid.UUID | str):
        super().__init__(f"Idempotency-Key {key!r} was already used for job {job_id} of app {app_id!r} "
                         f"with a different request body; use a new key for a new request")
        self.app_id = app_id
        self.key = key
        self.job_id = job_id


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t else None


@dataclasses.dataclass(frozen=True)
class Job:
    id: uuid.UUID
    app_id: str
    status: JobStatus
    priority: int
    params: dict[str, Any]
    result: Any
    error: str | None
    attempts: int
    max_attempts: int
    timeout_s: float
    backend: str | None
    idempotency_key: str | None
    lease_owner: str | None
    lease_expires_at: dt.datetime | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: Any) -> "Job":
        m = row._mapping if hasattr(row, "_mapping") else row
        return cls(**{f.name: (JobStatus(m[f.name]) if f.name == "status" else m[f.name]) for f in dataclasses.fields(cls)})

    def to_api(self) -> dict[str, Any]:
        return {
            "job_id": str(self.id),
            "app_id": self.app_id,
            "status": self.status.value,
            "priority": self.priority,
            "params": self.params,
            "result": self.result,
            "error": self.error,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "backend": self.backend,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }
