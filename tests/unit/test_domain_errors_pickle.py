"""Domain errors survive pickling: they cross Ray from the Router's handle methods to callers, and
Ray pickles exceptions. The default Exception pickling calls the constructor with the formatted
message, which breaks (or mangles) errors whose constructors take other arguments."""

from __future__ import annotations

import pickle
import uuid

import pytest

from gpu_orchestrator.core.apps import ParamError, ParamsInvalid
from gpu_orchestrator.core.jobs import (AppNotRunnable, IdempotencyConflict, InvalidRequest, JobNotFound, QueueFull,
                                        TransitionError, UnknownApp)

JOB_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")

CASES = [
    (JobNotFound(JOB_ID), {"job_id": JOB_ID}),
    (JobNotFound("not-a-uuid"), {"job_id": "not-a-uuid"}),
    (TransitionError(JOB_ID, "succeeded", "cancel"), {"job_id": JOB_ID, "current": "succeeded", "wanted": "cancel"}),
    (TransitionError(JOB_ID, None, "complete"), {"job_id": JOB_ID, "current": None, "wanted": "complete"}),
    (QueueFull("sdxl", 500, 7), {"app_id": "sdxl", "depth": 500, "retry_after_s": 7}),
    (IdempotencyConflict("sdxl", "key-1", JOB_ID), {"app_id": "sdxl", "key": "key-1", "job_id": JOB_ID}),
    (InvalidRequest("priority", "must be at most 100"),
     {"field": "priority", "message": "must be at most 100", "code": "invalid_request"}),
    (InvalidRequest("Idempotency-Key", "must not be empty", code="invalid_header"),
     {"field": "Idempotency-Key", "message": "must not be empty", "code": "invalid_header"}),
    (UnknownApp("app_id", "no app 'nope'"), {"field": "app_id", "message": "no app 'nope'", "code": "unknown_app"}),
    (AppNotRunnable("app_id", "no worker can run it"),
     {"field": "app_id", "message": "no worker can run it", "code": "app_not_runnable"}),
    (ParamError("params.width", "must be at most 2048"), {"field": "params.width", "message": "must be at most 2048"}),
]


@pytest.mark.parametrize("err,attrs", CASES, ids=lambda v: type(v).__name__ if isinstance(v, Exception) else "")
def test_round_trip_keeps_type_str_and_attributes(err: Exception, attrs: dict) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert back.args == err.args
    for name, value in attrs.items():
        assert getattr(back, name) == value, name


def test_params_invalid_round_trip_keeps_each_error() -> None:
    errors = [ParamError("params.width", "must be at most 2048"), ParamError("params.steps", "must be an integer")]
    err = ParamsInvalid(errors)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ParamsInvalid
    assert str(back) == str(err) == "params.width: must be at most 2048; params.steps: must be an integer"
    assert [type(e) for e in back.errors] == [ParamError, ParamError]
    assert [(e.field, e.message, str(e)) for e in back.errors] == [(e.field, e.message, str(e)) for e in errors]


def test_attributes_set_after_construction_survive() -> None:
    err = QueueFull("sdxl", 3, 1)
    err.add_note("while submitting")
    back = pickle.loads(pickle.dumps(err))
    assert back.__notes__ == ["while submitting"]
