"""Dependencies of the routes, read from what create_app stored on `app.state`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from gpu_orchestrator.api.streams import Streams
from gpu_orchestrator.artifacts import ArtifactStore
from gpu_orchestrator.service.fleet import Fleet
from gpu_orchestrator.service.jobs import JobService
from gpu_orchestrator.service.retention import Retention


def _jobs(request: Request) -> JobService:
    return request.app.state.jobs


def _fleet(request: Request) -> Fleet:
    return request.app.state.fleet


def _artifacts(request: Request) -> ArtifactStore | None:
    return request.app.state.artifacts


def _streams(request: Request) -> Streams:
    return request.app.state.streams


def _retention(request: Request) -> Retention | None:
    return getattr(request.app.state, "retention", None)


Jobs = Annotated[JobService, Depends(_jobs)]
RetentionDep = Annotated[Retention | None, Depends(_retention)]
FleetDep = Annotated[Fleet, Depends(_fleet)]
Artifacts = Annotated[ArtifactStore | None, Depends(_artifacts)]
StreamsDep = Annotated[Streams, Depends(_streams)]
# Checked by check_idempotency_key / the service (1-255 printable ASCII), so the 422 names the header.
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]
Prefer = Annotated[str | None, Header(alias="Prefer", description="`wait=N` (1-60 s; `wait` alone: 60): answer once the job has ended, or after N s with the job as it is then")]
