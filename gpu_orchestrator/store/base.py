"""The JobStore protocol: what the service layer needs from wherever jobs live. Two
implementations: store.postgres.PostgresJobStore (production) and store.memory.MemoryJobStore
(unit tests of the middle, no database). Every transition is guarded: it changes the job only from
the state it expects, else TransitionError (another router, a cancel or a rescue got there first).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

from gpu_orchestrator.core.jobs import Job, JobStatus, RetryPolicy

LeaseKey = tuple[uuid.UUID, int]  # (job id, claim number)


@dataclass(frozen=True)
class AppQueueStats:
    app_id: str
    queued: int
    running: int
    oldest_queued_age_s: float | None
    max_queued_priority: int | None


@dataclass(frozen=True)
class Rescued:
    """A running job whose lease ended without its router recording an outcome."""

    job_id: uuid.UUID
    app_id: str
    status: JobStatus  # queued again, or failed (lost max_lost_attempts times)
    error: str
    lost: bool = False  # it was on a model replica (counted in lost_attempts), not just claimed


class JobStore(Protocol):
    # intake and reads
    def submit(self, *, app_id: str, params: dict[str, Any], priority: int = 0, max_attempts: int = 3,
               timeout_s: float = 600.0, idempotency_key: str | None = None, max_queued: int | None = None,
               job_id: uuid.UUID | None = None, idempotency_ttl_s: float = 86_400.0) -> tuple[Job, bool]: ...
    def get(self, job_id: uuid.UUID) -> Job: ...
    def list(self, *, app_id: str | None = None, status: JobStatus | None = None, limit: int = 50,
             cursor: str | None = None) -> tuple[list[Job], str | None]: ...
    def cancel(self, job_id: uuid.UUID) -> tuple[Job, JobStatus]: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...

    # the dispatcher's
    def apps_with_queued(self) -> set[str]: ...
    def queue_stats(self) -> dict[str, AppQueueStats]: ...
    def service_times(self, *, window_s: float = 3600.0) -> dict[str, float]: ...
    def claim(self, *, app_id: str, owner: str, limit: int, lease_s: float, max_in_flight: int) -> list[Job]: ...
    def mark_dispatched(self, *, job_id: uuid.UUID, owner: str, attempt: int) -> None: ...
    def heartbeat(self, *, owner: str, leases: Iterable[LeaseKey], lease_s: float) -> set[LeaseKey]: ...
    def complete(self, *, job_id: uuid.UUID, owner: str, attempt: int, result: Any, backend: str) -> Job: ...
    def fail_attempt(self, *, job_id: uuid.UUID, owner: str, attempt: int, error: str, retryable: bool = True,
                     kind: str = "error", retry_delay_s: float = 0.0) -> Job: ...
    def fail_queued(self, app_id: str, error: str, *, older_than_s: float | None = None) -> list[uuid.UUID]: ...
    def rescue_expired(self, policy: RetryPolicy = RetryPolicy()) -> list[Rescued]: ...
    def release(self, *, owner: str, policy: RetryPolicy = RetryPolicy()) -> list[Rescued]: ...


class LeaderLock(Protocol):
    """One holder at a time across router replicas (the arbiter's leader election). `hold()` takes
    the lock or confirms it is still held; False when another holder has it or it was lost."""

    def hold(self) -> bool: ...
    def release(self) -> None: ...


class StoreUnavailable(Exception):
    """The store cannot be reached (a database outage): callers answer 503 + Retry-After."""
