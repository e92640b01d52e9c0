"""The JobStore protocol: what the service layer needs from wherever jobs live, split by who uses
it (JobIntake: the job service; JobLeases: the dispatcher; JobReports: stats, costs, the fleet;
JobRetention: retention; JobStore: all of them, for the composition root). Two implementations: store.postgres.PostgresJobStore (production) and store.memory.MemoryJobStore
(unit tests of the middle, no database). Every transition is guarded: it changes the job only from
the state it expects, else TransitionError (another router, a cancel or a rescue got there first).
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

from gpu_orchestrator.core.jobs import Job, JobStatus, RetryPolicy
from gpu_orchestrator.core.keys import Quota

LeaseKey = tuple[uuid.UUID, int]  # (job id, claim number)

MAX_ERRORS = 50  # error history kept per job (the oldest entry goes first)
ANY_ROUTE = "*"  # fail_queued / reroute_queued: jobs on every route (local or any cloud backend)
MAX_ERROR_CHARS = 2000


def clip_error(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


@dataclass(frozen=True)
class LeaseEnd:
    """How a running job's lease ended without an outcome, as both stores word and file it.
    Messages are %s-format strings (Postgres' format() reads the same)."""

    backoff: bool  # a lost run waits before it runs again
    kind_lost: str  # errors[].kind when the run was on a model replica
    kind_undispatched: str
    msg_lost: str  # % (claim, lost runs so far, the cap)
    msg_undispatched: str  # % (claim,)


LEASE_EXPIRED = LeaseEnd(
    backoff=True, kind_lost="lost", kind_undispatched="not_dispatched",
    msg_lost="lease expired: the router running attempt %s stopped responding (lost run %s of %s "
             "allowed); re-queued without using an attempt",
    msg_undispatched="lease expired: the router holding attempt %s stopped before handing it to a "
                     "model replica; re-queued without using an attempt",
)
RELEASED = LeaseEnd(
    backoff=False, kind_lost="released", kind_undispatched="released",
    msg_lost="the router running attempt %s stopped (lost run %s of %s allowed); re-queued without "
             "using an attempt",
    msg_undispatched="the router holding attempt %s stopped before handing it to a model replica; "
                     "re-queued without using an attempt",
)
MSG_GIVE_UP = ("lost its router %s times (its lease ended while attempt %s was on a model replica); "
               "the job may be crashing its router")  # % (lost runs, claim)


def encode_cursor(job: Job) -> str:
    """list()'s page cursor: the last job's (created_at, id), newest first."""
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, cid = raw.split("|")
        return dt.datetime.fromisoformat(created), uuid.UUID(cid)
    except Exception:
        raise ValueError("cursor is not a cursor returned by this API") from None


@dataclass(frozen=True)
class AppQueueStats:
    app_id: str
    queued: int
    running: int
    oldest_queued_age_s: float | None
    max_queued_priority: int | None


@dataclass(frozen=True)
class MinuteCount:
    """Jobs submitted in one minute (UTC, truncated) that are now in `status`."""

    minute: dt.datetime
    status: JobStatus
    count: int


@dataclass(frozen=True)
class Cost:
    """What one run cost: GPU-seconds, dollars, and what they were computed from."""

    gpu_seconds: float
    usd: float
    usage: dict[str, Any]


@dataclass(frozen=True)
class CostRow:
    """Finished jobs of one group (a backend, an app or a day) in a cost report."""

    key: str
    jobs: int
    cloud_jobs: int
    gpu_seconds: float
    usd: float


@dataclass(frozen=True)
class Rescued:
    """A running job whose lease ended without its router recording an outcome."""

    job_id: uuid.UUID
    app_id: str
    status: JobStatus  # queued again, or failed (lost max_lost_attempts times)
    error: str
    lost: bool = False  # it was on a model replica (counted in lost_attempts), not just claimed


@dataclass(frozen=True)
class Pruned:
    """A terminal job whose row retention deleted: what else it left (artifacts in its params and
    result, its event stream) is for the caller to remove."""

    job_id: uuid.UUID
    app_id: str
    params: dict[str, Any]
    result: Any


@dataclass(frozen=True)
class StartNow:
    """Lease terms for a job its accepting router may start at once (submit's `start`): the job
    goes in as running under this lease, dispatched, when its app has no claimable queued job
    and fewer than `max_in_flight` running (checked under the claim's lock, so the bound stays
    exact); else it goes in queued as usual. One transaction instead of insert, claim, mark."""

    owner: str
    lease_s: float
    max_in_flight: int


class JobIntake(Protocol):
    """The job service's (service/jobs.py, intake.py): accept, read, list, cancel."""

    def submit(self, *, app_id: str, params: dict[str, Any], priority: int = 0, max_attempts: int = 3,
               timeout_s: float = 600.0, idempotency_key: str | None = None, max_queued: int | None = None,
               job_id: uuid.UUID | None = None, idempotency_ttl_s: float = 86_400.0, route: str | None = None,
               route_reason: str | None = None, owner: str | None = None, quota: Quota | None = None,
               start: StartNow | None = None, webhook: str | None = None,
               webhook_events: list[str] | None = None) -> tuple[Job, bool]: ...  # QuotaExceeded: quota used up
    def get(self, job_id: uuid.UUID) -> Job: ...
    # The job path's calls from the event loop (the Postgres store runs them on asyncpg).
    async def asubmit(self, **kw: Any) -> tuple[Job, bool]: ...  # submit's arguments
    async def aget(self, job_id: uuid.UUID) -> Job: ...
    def list(self, *, app_id: str | None = None, status: JobStatus | None = None, limit: int = 50,
             cursor: str | None = None, owner: str | None = None,
             ids: tuple[uuid.UUID, uuid.UUID] | None = None) -> tuple[list[Job], str | None]: ...
    def cancel(self, job_id: uuid.UUID) -> tuple[Job, JobStatus]: ...
    # local jobs, or cloud-routed ones; of one app only where app_id is given (max_queued's count too)
    def queue_stats(self, *, cloud: bool = False, app_id: str | None = None) -> dict[str, AppQueueStats]: ...
    def ping(self) -> None: ...  # raises when the store cannot answer


class JobLeases(Protocol):
    """The dispatcher's (service/dispatcher.py, claims.py, outcomes.py): which queues have work,
    claims under a lease, the lease kept or lost, outcomes written, expired leases rescued."""

    def get(self, job_id: uuid.UUID) -> Job: ...
    def list(self, *, app_id: str | None = None, status: JobStatus | None = None, limit: int = 50,
             cursor: str | None = None, owner: str | None = None,
             ids: tuple[uuid.UUID, uuid.UUID] | None = None) -> tuple[list[Job], str | None]: ...
    def apps_with_queued(self) -> dict[str, set[str | None]]: ...  # app -> the routes its queued jobs wait on
    def queue_stats(self, *, cloud: bool = False, app_id: str | None = None) -> dict[str, AppQueueStats]: ...
    def service_times(self, *, window_s: float = 3600.0) -> dict[str, float]: ...
    # route None: the app's local jobs; a backend name: the jobs sent to that cloud backend.
    def claim(self, *, app_id: str, owner: str, limit: int, lease_s: float, max_in_flight: int,
              route: str | None = None) -> list[Job]: ...
    # The app's queued jobs on route `frm` (None: local; ANY_ROUTE: any cloud route) go to `backend`
    # (None: back to local); only `ids` when given, only those older than `older_than_s` when given.
    def reroute_queued(self, app_id: str, backend: str | None, reason: str, *, frm: str | None = None,
                       ids: Iterable[uuid.UUID] | None = None, older_than_s: float | None = None) -> list[uuid.UUID]: ...
    def fail_queued(self, app_id: str, error: str, *, older_than_s: float | None = None,
                    route: str | None = None) -> list[uuid.UUID]: ...  # route as reroute_queued's frm, or ANY_ROUTE: all
    def set_cloud_ref(self, *, job_id: uuid.UUID, owner: str, attempt: int, ref: dict[str, Any]) -> None: ...
    def mark_dispatched(self, *, job_id: uuid.UUID, owner: str, attempt: int) -> None: ...
    def heartbeat(self, *, owner: str, leases: Iterable[LeaseKey], lease_s: float) -> set[LeaseKey]: ...
    def complete(self, *, job_id: uuid.UUID, owner: str, attempt: int, result: Any,
                 backend: str, cost: Cost | None = None) -> Job: ...  # ResultNotStorable: the result itself cannot be kept
    async def acomplete(self, *, job_id: uuid.UUID, owner: str, attempt: int, result: Any, backend: str,
                        cost: "Cost | None" = None) -> Job: ...  # complete, on the event loop
    def fail_attempt(self, *, job_id: uuid.UUID, owner: str, attempt: int, error: str, retryable: bool = True,
                     backend: str | None = None, kind: str = "error", retry_delay_s: float = 0.0,
                     cost: Cost | None = None) -> Job: ...
    def rescue_expired(self, policy: RetryPolicy = RetryPolicy()) -> list[Rescued]: ...
    def release(self, *, owner: str, policy: RetryPolicy = RetryPolicy()) -> list[Rescued]: ...
    def is_transient(self, exc: BaseException) -> bool: ...  # the same write may land if tried again


class JobReports(Protocol):
    """Stats, costs and the fleet view (service/reports.py, fleet.py; the arbiter's two reads are
    service/arbiter/ports.py's QueueReader)."""

    def queue_stats(self, *, cloud: bool = False, app_id: str | None = None) -> dict[str, AppQueueStats]: ...
    def jobs_per_minute(self, *, minutes: int) -> list[MinuteCount]: ...  # jobs submitted in the last `minutes`
    def service_times(self, *, window_s: float = 3600.0) -> dict[str, float]: ...
    # Finished jobs in [since, until): by backend ("local" or the cloud's), app or day (UTC).
    def cost_summary(self, *, since: dt.datetime, until: dt.datetime, app_id: str | None = None,
                     group_by: str = "backend") -> list[CostRow]: ...


class JobRetention(Protocol):
    """Retention's (service/retention.py): delete up to `limit` terminal jobs finished more than
    older_than_s ago (oldest first); None when another caller is pruning right now. prunable: how
    many there are, by app."""

    def prune(self, *, older_than_s: float, limit: int) -> list[Pruned] | None: ...
    def prunable(self, *, older_than_s: float) -> dict[str, int]: ...


class JobStore(JobIntake, JobLeases, JobReports, JobRetention, Protocol):
    """All of it, and what the composition root needs besides (root/): PostgresJobStore and
    MemoryJobStore implement this; each service is given the narrow part it uses."""

    def close(self) -> None: ...
    def leader_lock(self, key: int) -> "LeaderLock": ...  # a new contender for lock `key`


class LeaderLock(Protocol):
    """One holder at a time across router replicas (the arbiter's leader election). `hold()` takes
    the lock or confirms it is still held; False when another holder has it or it was lost."""

    def hold(self) -> bool: ...
    def release(self) -> None: ...


class StoreUnavailable(Exception):
    """The store cannot be reached (a database outage): callers answer 503 + Retry-After, and a
    write may be tried again (store.pg_engine.is_transient_db_error counts it as transient)."""


class ResultNotStorable(Exception):
    """complete() cannot store this result (e.g. a NUL in a string): trying again fails the same way."""
