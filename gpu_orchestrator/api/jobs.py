"""/v1/jobs: submit (JSON or multipart with files), get, list, cancel, and the job's events (SSE)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from gpu_orchestrator.api.deps import Artifacts, AuthDep, CallerDep, IdempotencyKey, Jobs, LastEventId, Prefer, StreamsDep
from gpu_orchestrator.api.errors import (MAX_PREFER_WAIT_S, ApiError, check_idempotency_key, check_last_event_id,
                                         check_prefer_wait)
from gpu_orchestrator.service.waits import with_waits
from gpu_orchestrator.api.streams import sse
from gpu_orchestrator.core.jobs import PRIORITY_MAX, PRIORITY_MIN, Job, JobStatus
from gpu_orchestrator.service.jobs import ClientGone
from gpu_orchestrator.service.uploads import submit_with_files

router = APIRouter(tags=["jobs"])
_SMALL_INT = re.compile(r"[+-]?[0-9]{1,6}")


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app_id: str = Field(description="id of an app from GET /v1/apps", min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict, description="validated against the app's parameter schema")
    priority: int = Field(default=0, ge=PRIORITY_MIN, le=PRIORITY_MAX, description="higher runs first within an app's queue")
    webhook: str | None = Field(default=None, description="a URL POSTed the job (signed) on the chosen events")
    webhook_events_filter: list[str] | None = Field(default=None, description="start, completed (default: completed)")


class SubmitResponse(BaseModel):
    job_id: str
    status: str
    route: str = "local"  # where it will run: local, or the cloud backend it was sent to
    route_reason: str | None = None


async def submitted(jobs: Any, job: Job, created: bool, wait_s: int | None = None) -> Any:
    """202 for a new job; 200 when an Idempotency-Key found the earlier one. With `Prefer: wait=N`,
    the answer waits up to N s for the job to end and carries the whole job (as GET returns it):
    200 once it has ended (a short job then needs no poll at all), else 202 as above."""
    code = 202 if created else 200
    if wait_s is not None:
        if not job.status.terminal:
            job = await jobs.wait(job.id, wait_s)
        # An ended job is the answer itself: 200, as Replicate answers a finished prediction; 202
        # only for a job still queued or running when the wait ran out.
        code = 200 if job.status.terminal else code
        return JSONResponse(status_code=code, content=jobs.to_api(job), headers={"Preference-Applied": f"wait={wait_s}"})
    payload = {"job_id": str(job.id), "status": job.status.value, "route": job.route or "local",
               "route_reason": job.route_reason}
    # A response of our own, not a dict: FastAPI would validate it against the response model and
    # walk it with jsonable_encoder on every submit (the model stays for the docs).
    return JSONResponse(status_code=code, content=payload)


_SUBMIT_DOC = ("Answers 202 with the job's id once its row is committed. With `Prefer: wait=N` (seconds; more than "
               "60 waits 60), answers with the whole job, as GET /v1/jobs/{id} returns it: 200 once it has ended, "
               "202 if it is still queued or running after N s.")


@router.post("/v1/jobs", status_code=202, response_model=SubmitResponse, description=_SUBMIT_DOC)
async def submit(req: SubmitRequest, jobs: Jobs, caller: CallerDep, idempotency_key: IdempotencyKey = None,
                 prefer: Prefer = None) -> Any:
    wait_s = check_prefer_wait(prefer)
    return await submitted(jobs, *await jobs.submit(req.app_id, req.params, req.priority, idempotency_key, caller,
                                                    webhook=req.webhook, webhook_events=req.webhook_events_filter),
                           wait_s)


@router.post("/v1/jobs/multipart", status_code=202, response_model=SubmitResponse)
async def submit_multipart(request: Request, jobs: Jobs, artifacts: Artifacts, caller: CallerDep, auth: AuthDep,
                           idempotency_key: IdempotencyKey = None, prefer: Prefer = None) -> Any:
    """Submit with files: form fields app_id, params (a JSON object), priority, and one file
    field per `file` parameter of the app. Everything is validated before any file is stored.
    `Prefer: wait=N` as for POST /v1/jobs."""
    check_idempotency_key(idempotency_key)
    wait_s = check_prefer_wait(prefer)
    form = await request.form(max_files=32, max_fields=32)
    spec = jobs.runnable_app(form.get("app_id"))  # the app's refusals first, as on POST /v1/jobs
    caller.require_app(spec.id)  # before a byte is stored
    try:
        params = json.loads(form.get("params") or "{}")
    except (ValueError, TypeError) as e:
        raise ApiError(422, "invalid_request", f"must be a JSON object: {e}", field="params") from None
    if not isinstance(params, dict):
        raise ApiError(422, "invalid_request", "must be a JSON object", field="params")
    priority = form.get("priority") or "0"
    if not isinstance(priority, str) or not _SMALL_INT.fullmatch(priority.strip()):
        raise ApiError(422, "invalid_request", f"must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}", field="priority")
    files = {k: (v.filename, v.file) for k, v in form.multi_items() if hasattr(v, "filename") and hasattr(v, "read")}
    webhook = form.get("webhook") if isinstance(form.get("webhook"), str) else None
    events = form.get("webhook_events_filter")  # comma-separated in a form
    events = [e.strip() for e in events.split(",") if e.strip()] if isinstance(events, str) else None
    # the priority's range is checked with the JSON route's, in the service
    job, job_created = await submit_with_files(jobs, artifacts, spec, params, int(priority), files,
                                               idempotency_key, caller, grant=lambda uri: auth.uploaded(caller, uri),
                                               webhook=webhook, webhook_events=events)
    return await submitted(jobs, job, job_created, wait_s)



@router.get("/v1/jobs/{job_id}")
async def get(job_id: uuid.UUID, jobs: Jobs, caller: CallerDep, request: Request,
              wait: Annotated[float | None, Query(ge=0, description=(
                  f"long poll: answer once the job has ended or after this many seconds (at most "
                  f"{MAX_PREFER_WAIT_S}: more is capped), whichever comes first"))] = None) -> Any:
    job = await jobs.get(job_id, caller)
    if wait and not job.status.terminal:
        try:  # a caller that leaves stops the wait, not the job
            job = await jobs.wait(job_id, min(wait, MAX_PREFER_WAIT_S), gone=request.is_disconnected, caller=caller)
        except ClientGone:
            return JSONResponse(status_code=499, content={"error": "client_gone"})
    return JSONResponse(jobs.to_api(job))  # JSON-ready already: no jsonable_encoder walk per poll


@router.get("/v1/jobs")
async def list_jobs(
    jobs: Jobs,
    caller: CallerDep,
    app_id: str | None = None,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
    id_prefix: Annotated[str | None, Query(description="jobs whose id starts with these hex digits (4 or more)")] = None,
) -> dict[str, Any]:
    """Newest first. A key without read:all lists its own jobs only."""
    found, nxt = await jobs.list(app_id=app_id, status=status, limit=limit, cursor=cursor, caller=caller,
                                 id_prefix=id_prefix)
    return {"jobs": [jobs.to_api(j) for j in found], "next_cursor": nxt}


@router.delete("/v1/jobs/{job_id}")
async def cancel(job_id: uuid.UUID, jobs: Jobs, caller: CallerDep) -> dict[str, Any]:
    return jobs.to_api(await jobs.cancel(job_id, caller))


@router.get("/v1/jobs/{job_id}/events")
async def events(job_id: uuid.UUID, jobs: Jobs, streams: StreamsDep, caller: CallerDep,
                 last_event_id: LastEventId = None) -> StreamingResponse:
    """Server-Sent Events: progress and status; resume with the Last-Event-ID header. A stream
    ends at the terminal status, or after a time limit with a `retry:` hint (resume then)."""
    after = check_last_event_id(last_event_id)
    job = await jobs.get(job_id, caller)  # 404 before the stream starts (another key's job too)
    streams.admit()
    # A keep-alive (and a look at the row) each 5 s of quiet: hundreds of idle subscribers stay cheap.
    body = sse(with_waits(jobs, job, jobs.follow(job_id, after, block_ms=5_000), after), streams.limits.max_stream_s)
    return StreamingResponse(streams.counted(body), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
