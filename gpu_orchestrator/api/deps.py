"""Dependencies of the routes, read from what create_app stored on `app.state`.

All `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop on every
request for a getattr."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Request

from gpu_orchestrator.api.streams import Streams
from gpu_orchestrator.core.keys import Caller, Scope, bearer
from gpu_orchestrator.service.auth import OPEN_AUTH, Auth
from gpu_orchestrator.store.artifacts import ArtifactStore
from gpu_orchestrator.service.fleet import Fleet
from gpu_orchestrator.service.jobs import JobService
from gpu_orchestrator.service.reports import Reports
from gpu_orchestrator.service.retention import Retention


async def _jobs(request: Request) -> JobService:
    return request.app.state.jobs


async def _fleet(request: Request) -> Fleet:
    return request.app.state.fleet


async def _artifacts(request: Request) -> ArtifactStore | None:
    return request.app.state.artifacts


async def _streams(request: Request) -> Streams:
    return request.app.state.streams


async def _reports(request: Request) -> Reports:
    return request.app.state.reports


async def _retention(request: Request) -> Retention | None:
    return getattr(request.app.state, "retention", None)


def _auth_of(request: Request) -> Auth:
    return getattr(request.app.state, "auth", None) or OPEN_AUTH


async def _auth(request: Request) -> Auth:
    return _auth_of(request)


async def _caller(request: Request) -> Caller:
    """The key in `Authorization: Bearer` (the openai client sends the same), checked on every
    request (FastAPI runs this once per request however many routes' dependencies name it)."""
    return await _auth_of(request).caller(bearer(request.headers.get("authorization")))


def scoped(scope: Scope) -> Any:
    """A route (or router) dependency: the caller must hold `scope` (admin holds every scope)."""
    async def check(caller: Annotated[Caller, Depends(_caller)]) -> Caller:
        caller.require(scope)
        return caller
    return Depends(check)


Jobs = Annotated[JobService, Depends(_jobs)]
CallerDep = Annotated[Caller, Depends(_caller)]
AuthDep = Annotated[Auth, Depends(_auth)]
AUTHENTICATED = Depends(_caller)  # any valid key (or the open stack's anonymous caller)
ReportsDep = Annotated[Reports, Depends(_reports)]
RetentionDep = Annotated[Retention | None, Depends(_retention)]
FleetDep = Annotated[Fleet, Depends(_fleet)]
Artifacts = Annotated[ArtifactStore | None, Depends(_artifacts)]
StreamsDep = Annotated[Streams, Depends(_streams)]
# Checked by check_idempotency_key / the service (1-255 printable ASCII), so the 422 names the header.
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]
Prefer = Annotated[str | None, Header(alias="Prefer", description=(
    "`wait=N` (whole seconds; `wait` alone, or more than 60: 60): answer once the job has ended (200), "
    "or after N s with the job as it is then (202)"))]
