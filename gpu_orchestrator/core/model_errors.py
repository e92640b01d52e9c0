"""The errors a model run ends with, as types: what the dispatcher records and whether it retries.

Models raise these (JobCancelled, JobTimeout, SlotTimeout, ModelLoadError); a backend adapter
(serve/backend.py for Ray Serve, service/backends.py in process) turns everything else into one of
them, so the service layer reads `kind` and `retryable` instead of matching class-name strings.
They cross Ray by pickling: each keeps its constructor arguments in `args`.

`describe()` is the text the job row gets: 'Type: message' (the message's last line, which is where
Ray and Python put the reason), or just the message for a timeout ('timed out after 5 s').
"""

from __future__ import annotations

from typing import Any, ClassVar


def last_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[-1] if lines else ""


class ModelError(Exception):
    kind: ClassVar[str] = "error"  # the `kind` of the failed attempt in the job's error history
    retryable: ClassVar[bool] = True
    cost: Any = None  # what a cloud run that ended so was billed (store.base.Cost), when known

    @property
    def type_name(self) -> str:
        """The name the job row shows (ModelFailed and ReplicaDied keep the original's)."""
        return type(self).__name__

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def describe(self) -> str:
        text = last_line(self.message)
        return f"{self.type_name}: {text}" if text else self.type_name


class JobCancelled(ModelError):
    """Raised inside a model between steps when the job's cancel flag is set, and by a backend when
    the request was cancelled. Not a failure: the cancel (or lost lease) has settled the job."""

    kind = "cancelled"
    retryable = False


class _Timeout(ModelError):
    def describe(self) -> str:
        return last_line(self.message) or self.type_name


class JobTimeout(_Timeout):
    """The job's work ran past its timeout_s, counted from when it started on this replica (time
    spent waiting for a slot does not count)."""

    kind = "timeout"


class SlotTimeout(_Timeout):
    """The job waited past its bound for a free slot on this replica (a max_concurrent model busy
    with earlier jobs)."""

    kind = "slot_timeout"


class ModelLoadError(ModelError, RuntimeError):
    """The model could not load. A replica whose load failed stays up in state `failed` and fails
    each job sent to it at once with this error (not retried), instead of leaving jobs to wait for
    a replica that never comes; it tries loading again on a job after `reload_after_s`."""

    kind = "load_error"
    retryable = False


class _Named(ModelError):
    """An error that stands for another one (by its type name and message)."""

    def __init__(self, message: str = "", type_name: str | None = None):
        super().__init__(message, type_name)

    @property
    def type_name(self) -> str:
        return self.args[1] or type(self).__name__

    def __str__(self) -> str:
        return self.message


class ReplicaDied(_Named):
    """The model replica died or became unreachable with the job on it. Charged as an attempt (the
    job may be what crashed it) and retried."""

    kind = "replica_died"

    @classmethod
    def of(cls, exc: BaseException) -> "ReplicaDied":
        return cls(str(exc), type(exc).__name__)


class ModelFailed(_Named):
    """Any other exception from the model's code, kept as its type name and message."""

    @classmethod
    def of(cls, exc: BaseException) -> "ModelFailed":
        return cls(str(exc), type(exc).__name__)


class ProviderFailed(ModelError):
    """A cloud provider ran the job and reports it failed (its own message follows). Not retried:
    the same input would fail the same way there."""

    kind = "provider_error"
    retryable = False


class ProviderUnavailable(ModelError):
    """The provider did not answer usefully (429, 5xx, timeouts) after our in-run retries: retried
    as a new attempt after the job's backoff."""

    kind = "provider_unavailable"


def as_model_error(exc: BaseException) -> ModelError:
    """A model's own error as it is; anything else wrapped as ModelFailed. (Ray's wrappers are
    unwrapped before this, in serve/backend.py.)"""
    return exc if isinstance(exc, ModelError) else ModelFailed.of(exc)


__all__ = ["JobCancelled", "JobTimeout", "ModelError", "ModelFailed", "ModelLoadError", "ProviderFailed",
           "ProviderUnavailable", "ReplicaDied",
           "SlotTimeout", "as_model_error", "last_line"]
