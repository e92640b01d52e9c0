"""The typed error protocol across Ray: serve.backend.from_ray turns what a Serve call raises (Ray's
wrappers around a model's exception, a dead replica, a cancelled request) into core.model_errors
types, with the same job-row text and error kind the dispatcher recorded when it matched class-name
strings. Real Ray exception objects, no Ray started."""

from __future__ import annotations

import asyncio
import pickle

import pytest
import ray.exceptions as rex
import ray.serve.exceptions as sex

from gpu_orchestrator.core.model_errors import (JobCancelled, JobTimeout, ModelError, ModelFailed, ModelLoadError,
                                                ReplicaDied, SlotTimeout, as_model_error)
from gpu_orchestrator.serve.backend import ServeBackend, from_ray


def wrapped(cause: BaseException) -> BaseException:
    """What awaiting a DeploymentResponse raises when the model raised `cause` in its replica."""
    tb = f"Traceback (most recent call last):\n  File \"model.py\", line 1\n{type(cause).__name__}: {cause}"
    return rex.RayTaskError("ServeReplica:app:m.handle_request", tb, cause).as_instanceof_cause()


# The texts and kinds the dispatcher recorded before the protocol (its string matching, kept as the oracle).
def old_describe(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        exc = cause
    msg = str(exc).strip().splitlines()
    text = msg[-1] if msg else ""
    if text and _names(exc) & {"JobTimeout", "SlotTimeout"}:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _names(exc: BaseException) -> set[str]:
    return {type(exc).__name__, type(getattr(exc, "cause", None)).__name__}


def old_kind(exc: BaseException) -> str:
    names = _names(exc)
    if "JobTimeout" in names:
        return "timeout"
    if "SlotTimeout" in names:
        return "slot_timeout"
    if "ModelLoadError" in names:
        return "load_error"
    if names & {"ActorDiedError", "ActorUnavailableError", "RayActorError"}:
        return "replica_died"
    return "error"


def old_cancellation(exc: BaseException) -> bool:
    return bool(_names(exc) & {"JobCancelled", "RequestCancelledError", "TaskCancelledError", "CancelledError"})


FAILURES = [
    wrapped(JobTimeout("timed out after 5 s")),
    wrapped(SlotTimeout("waited 0.1 s for a free replica slot (1 job(s) running on it)")),
    wrapped(ModelLoadError("m failed to load: OSError: no such file")),
    wrapped(RuntimeError("out of memory (first try)")),
    wrapped(ValueError("line one\nthe reason")),  # the last line is the reason
    wrapped(KeyError("prompt")),
    wrapped(RuntimeError()),
    rex.ActorDiedError(),
    rex.ActorUnavailableError("the actor is temporarily unavailable", b"\x00" * 16),
    rex.RayActorError(),
    sex.BackPressureError(num_queued_requests=3, max_queued_requests=2),
    RuntimeError("raised before it left this process"),
    JobTimeout("timed out after 2 s"),
]


@pytest.mark.parametrize("exc", FAILURES, ids=lambda e: type(e).__name__)
def test_a_failure_keeps_todays_text_and_kind(exc):
    err = from_ray(exc)
    assert isinstance(err, ModelError) and not isinstance(err, JobCancelled)
    assert err.describe() == old_describe(exc)
    assert err.kind == old_kind(exc)
    assert err.retryable == (old_kind(exc) != "load_error")


def test_what_each_failure_becomes():
    assert type(from_ray(wrapped(JobTimeout("t")))) is JobTimeout
    assert type(from_ray(wrapped(SlotTimeout("t")))) is SlotTimeout
    assert type(from_ray(wrapped(ModelLoadError("m")))) is ModelLoadError
    died = from_ray(rex.ActorDiedError())
    assert isinstance(died, ReplicaDied) and died.retryable
    assert died.describe() == "ActorDiedError: The actor died unexpectedly before finishing this task."
    failed = from_ray(wrapped(RuntimeError("boom")))
    assert isinstance(failed, ModelFailed) and failed.describe() == "RuntimeError: boom" and failed.kind == "error"


CANCELLATIONS = [
    sex.RequestCancelledError("req-1"),
    sex.TaskCancelledError(),
    rex.TaskCancelledError(),
    asyncio.CancelledError(),
    wrapped(asyncio.CancelledError()),
    wrapped(JobCancelled("job 1 cancelled")),
    JobCancelled("job 1 cancelled"),
]


@pytest.mark.parametrize("exc", CANCELLATIONS, ids=lambda e: type(e).__name__)
def test_a_cancelled_request_is_job_cancelled(exc):
    assert old_cancellation(exc)
    err = from_ray(exc)
    assert isinstance(err, JobCancelled) and err.kind == "cancelled" and not err.retryable


def test_model_errors_cross_a_process_boundary():
    for err in [JobTimeout("timed out after 5 s"), ModelLoadError("m failed to load"), JobCancelled("job x"),
                ModelFailed("boom", "RuntimeError"), ReplicaDied("gone", "ActorDiedError")]:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and back.describe() == err.describe() and back.kind == err.kind


def test_old_names_stay_importable_from_models_base():
    from gpu_orchestrator.models import base

    assert base.JobTimeout is JobTimeout and base.SlotTimeout is SlotTimeout
    assert base.ModelLoadError is ModelLoadError and base.JobCancelled is JobCancelled
    assert issubclass(ModelLoadError, RuntimeError)  # as before


def test_describe_rules():
    assert JobTimeout("timed out after 5 s").describe() == "timed out after 5 s"
    assert JobTimeout().describe() == "JobTimeout"
    assert ModelFailed.of(RuntimeError("a\nb")).describe() == "RuntimeError: b"
    assert ModelFailed.of(RuntimeError()).describe() == "RuntimeError"
    assert as_model_error(KeyError("k")).describe() == "KeyError: 'k'"
    e = JobTimeout("x")
    assert as_model_error(e) is e


class Response:
    def __init__(self, exc: BaseException | None = None, result=None):
        self.exc, self.result, self.cancelled = exc, result, False

    def __await__(self):
        async def go():
            await asyncio.sleep(0)
            if self.exc is not None:
                raise self.exc
            return self.result
        return go().__await__()

    def cancel(self):
        self.cancelled = True


class Handle:
    def __init__(self, response: Response | Exception):
        self.response, self.calls = response, []

        class Method:
            def remote(_, *args, **kw):
                self.calls.append((args, kw))
                if isinstance(self.response, Exception):
                    raise self.response
                return self.response

        self.run = Method()


class FakeJob:
    id = "00000000-0000-0000-0000-000000000001"
    params = {"x": 1}


def test_serve_backend_calls_the_handle_and_translates_what_it_raises():
    async def go():
        ok = Handle(Response(result={"y": 2}))
        run = ServeBackend(ok).run(FakeJob(), 3, timeout_s=30.0, queue_timeout_s=5.0)
        assert await run == {"y": 2}
        assert ok.calls == [((FakeJob.id, {"x": 1}, 3), {"timeout_s": 30.0, "queue_timeout_s": 5.0})]

        slow = Response(wrapped(JobTimeout("timed out after 30 s")))
        run = ServeBackend(Handle(slow)).run(FakeJob(), 1, timeout_s=30.0, queue_timeout_s=5.0)
        with pytest.raises(JobTimeout, match="timed out after 30 s"):
            await run
        run.cancel()
        assert slow.cancelled

        cancelled = ServeBackend(Handle(Response(sex.RequestCancelledError("r")))).run(
            FakeJob(), 1, timeout_s=1.0, queue_timeout_s=1.0)
        with pytest.raises(JobCancelled):
            await cancelled

        with pytest.raises(ReplicaDied):  # raised by .remote() itself
            ServeBackend(Handle(rex.ActorDiedError())).run(FakeJob(), 1, timeout_s=1.0, queue_timeout_s=1.0)

    asyncio.run(go())


def test_serve_backend_calls_models_by_value_over_grpc_unless_the_config_says_actor():
    """router.model_calls: "grpc" (the default) asks Serve for by-value calls (its gRPC between
    replicas); "actor" keeps the handle as given (Ray actor calls, results by reference)."""
    from gpu_orchestrator.core.config import RouterSpec

    class Options(Handle):
        def __init__(self, response):
            super().__init__(response)
            self.options_asked: list[dict] = []
            self.by_value = Handle(response)

        def options(self, **kw):
            self.options_asked.append(kw)
            return self.by_value

    async def go(by_value: bool) -> Options:
        h = Options(Response(result={"y": 2}))
        assert await ServeBackend(h, by_value=by_value).run(FakeJob(), 1, timeout_s=1.0, queue_timeout_s=1.0) == {"y": 2}
        return h

    grpc = asyncio.run(go(True))
    assert grpc.options_asked == [{"_by_reference": False}] and len(grpc.by_value.calls) == 1 and not grpc.calls
    actor = asyncio.run(go(False))
    assert actor.options_asked == [] and len(actor.calls) == 1
    assert RouterSpec().model_calls == "grpc"
    with pytest.raises(ValueError, match="model_calls"):
        RouterSpec(model_calls="http")
