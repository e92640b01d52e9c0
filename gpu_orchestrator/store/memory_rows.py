"""What the in-memory store's parts share about a row of the jobs table: a JSONB round trip
(_json), a caller's own copy of a job (_copy), seconds as a timedelta (_secs), and the queued and
running states (Q, R)."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
from typing import Any, Callable

from gpu_orchestrator.core.jobs import Job, JobStatus

Q, R = JobStatus.queued, JobStatus.running


def _json(value: Any, default: Callable[[Any], Any] | None = None) -> Any:
    # What a JSONB round trip does: a copy, tuples become lists, keys become strings.
    return json.loads(json.dumps(value, default=default))


def _secs(s: float) -> dt.timedelta:
    return dt.timedelta(seconds=s)


def _copy(job: Job) -> Job:
    # Callers get their own Job, as from a database row: changing its params changes nothing here.
    return dataclasses.replace(job, params=copy.deepcopy(job.params), result=copy.deepcopy(job.result),
                               errors=tuple(dict(e) for e in job.errors))
