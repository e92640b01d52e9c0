"""Jobs and their state machine. Pure: no I/O.

    queued  --claim-->  running --complete--> succeeded
    queued  <--retry--  running   a model error or timeout with attempts left (after a backoff), or
                                  the run was lost (lease expired) or released: no attempt used
    running --fail-->   failed    attempts spent, not retryable, or lost max_lost_attempts times
    queued  --fail-->   failed    the app can never run here (unplaceable, no longer configured)
    queued|running --cancel--> cancelled

Counters on a job: `claims` numbers the runs handed out (claim n is "attempt n" in events, errors
and the model's ctx.attempt, and guards the lease); `attempts` counts the ones charged against
`max_attempts` (a model error or timeout); `lost_attempts` counts runs lost to infrastructure (the
router's lease expired or it stopped while the job was on a model replica), capped separately so a
job that kills its routers still ends. A claim never handed to a model replica is charged nothing.

The store enforces each arrow in SQL (UPDATE ... WHERE status IN (...)); TRANSITIONS documents them
and lets the pure tests check the store against the diagram.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import random
import re
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
    """A domain error. Each subclass defines `__reduce__` (its constructor's arguments plus its
    attributes) so it survives pickling: these cross Ray from the Router's handle methods to callers,
    and the default (`type(self)(*self.args)`) would call the constructor with the formatted message."""


class JobNotFound(JobError):
    def __init__(self, job_id: uuid.UUID | str):
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id

    def __reduce__(self):
        return type(self), (self.job_id,), self.__dict__


class TransitionError(JobError):
    """A guarded UPDATE matched zero rows: the job was not in a state that allows the change."""

    def __init__(self, job_id: uuid.UUID | str, current: str | None, wanted: str):
        super().__init__(f"job {job_id} is {current or 'missing'}; cannot {wanted}")
        self.job_id = job_id
        self.current = current
        self.wanted = wanted

    def __reduce__(self):
        return type(self), (self.job_id, self.current, self.wanted), self.__dict__


class QueueFull(JobError):
    def __init__(self, app_id: str, depth: int, retry_after_s: int):
        super().__init__(f"queue for app {app_id!r} is full ({depth} queued); retry later")
        self.app_id = app_id
        self.depth = depth
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return type(self), (self.app_id, self.depth, self.retry_after_s), self.__dict__

    @classmethod
    def at(cls, app_id: str, depth: int) -> "QueueFull":
        """Refusal at this depth: retry after a second per hundred queued, 1 to 60 s."""
        return cls(app_id, depth, retry_after_s=max(1, min(60, depth // 100)))


class IdempotencyConflict(JobError):
    """An Idempotency-Key was reused for a different request (another body for the same app)."""

    def __init__(self, app_id: str, key: str, job_id: uuid.UUID | str):
        super().__init__(f"Idempotency-Key {key!r} was already used for job {job_id} of app {app_id!r} "
                         f"with a different request body; use a new key for a new request")
        self.app_id = app_id
        self.key = key
        self.job_id = job_id

    def __reduce__(self):
        return type(self), (self.app_id, self.key, self.job_id), self.__dict__


class InvalidRequest(JobError):
    """A request the domain refuses, naming the offending field (`app_id`, `priority`, a header)."""

    code = "invalid_request"

    def __init__(self, field: str, message: str, code: str | None = None):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        if code is not None:
            self.code = code

    def __reduce__(self):
        # The instance's own `code` (when the constructor was given one) rides in the state dict.
        return type(self), (self.field, self.message), self.__dict__


class UnknownApp(InvalidRequest):
    code = "unknown_app"


class AppNotRunnable(InvalidRequest):
    """The app exists but nothing here can run it: its jobs would wait forever."""

    code = "app_not_runnable"


PRIORITY_MIN, PRIORITY_MAX = -100, 100
_KEY_RE = re.compile(r"[\x20-\x7e]{1,255}")


def idempotency_key_problem(key: str) -> str | None:
    """Why `key` is no Idempotency-Key (1-255 printable ASCII characters; a UUID is typical), or None."""
    if _KEY_RE.fullmatch(key):
        return None
    if not key:
        return "must not be empty"
    return f"is {len(key)} characters; at most 255" if len(key) > 255 else "must be printable ASCII"


ID_PREFIX_MIN = 4  # hex digits: shorter would match too much to be what anyone meant


def id_prefix_range(prefix: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The first and last job id that start with `prefix` (hex digits; dashes ignored), as the short
    id the CLI's progress bar shows. ValueError saying why for anything else."""
    digits = prefix.replace("-", "").lower()
    if not (ID_PREFIX_MIN <= len(digits) <= 32) or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"must be {ID_PREFIX_MIN} to 32 hex digits of a job id (got {prefix[:40]!r})")
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def request_fingerprint(params: dict[str, Any], priority: int) -> str:
    """sha256 of a submit's body (canonical JSON), to tell a retried request from a new one that
    reuses its Idempotency-Key."""
    canon = json.dumps({"params": params, "priority": priority}, sort_keys=True, separators=(",", ":"),
                       ensure_ascii=False, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How soon a job runs again and how many infrastructure losses it survives."""

    backoff_s: float = 2.0  # the first retry waits about this long; doubles per attempt
    backoff_max_s: float = 120.0
    max_lost_attempts: int = 5  # the job fails when its run is lost to infrastructure this often

    def delay_s(self, n: int, rand: float | None = None) -> float:
        """The wait before retry n (1 = the first retry): exponential, capped, with jitter in
        [d/2, d] so jobs failed together (a replica crash) do not come back together."""
        d = min(self.backoff_max_s, self.backoff_s * 2 ** max(0, n - 1))
        return d * (0.5 + 0.5 * (random.random() if rand is None else rand))


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
    claims: int = 0
    lost_attempts: int = 0
    errors: tuple[dict[str, Any], ...] = ()  # one entry per failed or lost run: {attempt, error, at, kind}
    dispatched_at: dt.datetime | None = None  # when this claim was handed to a model replica
    run_after: dt.datetime | None = None  # a queued retry waits for its backoff until then
    route: str | None = None  # None: local; else the cloud backend it was sent to (core.cloud)
    route_reason: str | None = None
    cloud_ref: dict[str, Any] | None = None  # the provider's handle on the current run
    gpu_seconds: float | None = None
    cost_usd: float | None = None
    usage: dict[str, Any] | None = None  # what the cost was computed from (provider metrics, price)
    owner: str | None = None  # the API key id that submitted it (None: an open stack's anonymous caller)
    # Webhooks (core/webhooks.py): the URL, the events asked for, those due, and every try's outcome.
    webhook: str | None = None
    webhook_events: tuple[str, ...] = ()
    webhook_pending: tuple[str, ...] = ()
    webhook_state: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: Any) -> "Job":
        m = row._mapping if hasattr(row, "_mapping") else row
        vals = {f.name: m[f.name] for f in dataclasses.fields(cls) if f.name in m}
        vals["status"] = JobStatus(vals["status"])
        for name in ("errors", "webhook_events", "webhook_pending"):
            if name in vals:
                vals[name] = tuple(vals[name] or ())
        return cls(**vals)

    def _webhook_api(self) -> dict[str, Any]:
        if self.webhook is None:
            return {}
        return {"webhook": self.webhook, "webhook_events_filter": list(self.webhook_events),
                "webhook_delivery": {"pending": list(self.webhook_pending), **(self.webhook_state or {})}}

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
            "lost_attempts": self.lost_attempts,
            "errors": list(self.errors),
            "retry_at": _iso(self.run_after) if self.status == JobStatus.queued else None,
            "backend": self.backend,
            "route": self.route or "local",
            "route_reason": self.route_reason,
            "cost": None if self.cost_usd is None else {
                "gpu_seconds": self.gpu_seconds, "usd": self.cost_usd, "usage": self.usage},
            "owner": self.owner,
            **self._webhook_api(),
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }
