"""OpenAI-compatible API for chat apps (`task: chat`): any OpenAI client works against /v1.

Retries of one request land on one job: by its Idempotency-Key, or for the openai SDK's own retries
(which send none) by the same body from the same client. A client that disconnects cancels its
job; a non-stream wait ends before the SDK's 600 s timeout with a retryable 503 whose retry keeps
waiting for the same job."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from gpu_orchestrator.api import openai_format as oai
from gpu_orchestrator.api.deps import AUTHENTICATED, CallerDep, IdempotencyKey, Jobs, StreamsDep
from gpu_orchestrator.api.errors import ApiError
from gpu_orchestrator.core.apps import AppSpec
from gpu_orchestrator.core.jobs import Job, JobStatus
from gpu_orchestrator.core.keys import Caller
from gpu_orchestrator.service.jobs import ClientGone, JobService

router = APIRouter(tags=["openai"])
RETRY_KEY_PREFIX = "gpu-orch:openai-retry:"
# A job an SDK retry may rejoin: one that can still answer.
REJOINABLE = (JobStatus.queued, JobStatus.running, JobStatus.succeeded)


@router.get("/v1/models", dependencies=[AUTHENTICATED])
async def models(jobs: Jobs) -> dict[str, Any]:
    return oai.models_list([a.id for a in jobs.apps.values() if a.task == "chat"])


@router.post("/v1/chat/completions")
async def chat(req: oai.ChatRequest, request: Request, jobs: Jobs, streams: StreamsDep, caller: CallerDep,
               idempotency_key: IdempotencyKey = None) -> Any:
    """The same key as every other route (`api_key=` of the openai client is sent as a Bearer token)."""
    spec = jobs.apps.get(req.model)
    if spec is None or spec.task != "chat":
        chat_apps = [a.id for a in jobs.apps.values() if a.task == "chat"]
        raise ApiError(404, "model_not_found", f"{req.model[:64]!r} is not a chat app (chat apps: {chat_apps})",
                       field="model")
    if req.stream:
        streams.admit()
    job = await _job(jobs, spec, req, request, idempotency_key, caller)
    created = int(time.time())
    if req.stream:
        return StreamingResponse(streams.counted(_chat_stream(jobs, job.id, req.model, created)),
                                 media_type="text/event-stream")
    bound = oai.wait_bound_s(spec.timeout_s, request.headers.get("x-stainless-read-timeout"))
    try:
        with jobs.attached(job.id):
            done = await jobs.wait(job.id, bound, gone=request.is_disconnected)
    except (asyncio.CancelledError, ClientGone) as e:
        # Serve cancels the request when its client disconnects; plain ASGI servers tell us through
        # is_disconnected. Either way nobody waits for the answer any more.
        jobs.cancel_soon(job.id, "client disconnected")
        if isinstance(e, ClientGone):
            return Response(status_code=499)  # nobody reads it
        raise
    if not done.status.terminal:
        raise ApiError(503, "still_running",
                       f"job {done.id} is still {done.status.value} after {bound:g} s; retry the same request (same "
                       f"Idempotency-Key) to keep waiting for it", headers={"Retry-After": "1", "x-should-retry": "true"})
    if done.status != JobStatus.succeeded:
        raise ApiError(502, "generation_failed", f"job {done.id} {done.status.value}: {done.error}")
    return oai.completion(str(done.id), req.model, done.result, created)


async def _job(jobs: JobService, spec: AppSpec, req: oai.ChatRequest, request: Request, key: str | None,
               caller: Caller) -> Job:
    params = req.job_params()
    if key is not None:
        job, _ = await jobs.submit(spec.id, params, idempotency_key=key, caller=caller)
        return job
    # No key: the SDK's retry of a request (same body, same client) rejoins the first one's job
    # while that job can still answer. Remembered in Redis, lossy: without it a retry runs anew.
    fp = RETRY_KEY_PREFIX + oai.fingerprint(spec.id, params, request.headers.get("authorization"),
                                            request.client.host if request.client else None)
    if oai.is_sdk_retry(request.headers.get("x-stainless-retry-count")):
        earlier = await jobs.recall(fp)
        if earlier is not None and earlier.status in REJOINABLE and earlier.owner == caller.owner:
            return earlier
    job, _ = await jobs.submit(spec.id, params, caller=caller)
    await jobs.remember(fp, job.id, spec.timeout_s + 120)
    return job


async def _chat_stream(jobs: JobService, job_id: uuid.UUID, model: str, created: int) -> AsyncIterator[str]:
    finished = False
    streamed = ""
    events = jobs.follow(job_id)
    try:
        yield oai.chunk(str(job_id), model, created, {"role": "assistant", "content": ""})
        async for ev in events:
            if ev is None or ev.type == "gap":
                continue
            if ev.type == "progress" and "token" in ev.data:
                streamed += ev.data["token"]
                yield oai.chunk(str(job_id), model, created, {"content": ev.data["token"]})
            elif ev.terminal:
                finished = True
                if ev.data["status"] == "succeeded":
                    result = ev.data.get("result") or {}
                    text = result.get("text") or ""
                    if text.startswith(streamed) and len(text) > len(streamed):
                        # Tokens lost while Redis was away: the rest of the text, from the job row.
                        yield oai.chunk(str(job_id), model, created, {"content": text[len(streamed):]})
                    yield oai.chunk(str(job_id), model, created, {}, result.get("finish_reason", "stop"))
                else:
                    err = {"error": {"message": f"job {job_id} {ev.data['status']}: {ev.data.get('error')}",
                                     "type": "generation_failed"}}
                    yield f"data: {json.dumps(err)}\n\n"
                yield "data: [DONE]\n\n"
                return
    finally:
        # Schedule the cancel first: a close that raises (or is cancelled) must not skip it.
        if not finished:  # the client went away mid-stream: stop the generation
            jobs.cancel_soon(job_id, "client disconnected from the stream")
        await events.aclose()  # type: ignore[attr-defined]
