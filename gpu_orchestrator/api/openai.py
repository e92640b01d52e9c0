"""OpenAI-compatible API: any OpenAI client works against /v1. Chat apps (`task: chat`) answer
/v1/chat/completions and /v1/completions, image apps /v1/images/generations, transcription apps
/v1/audio/transcriptions and /v1/audio/translations (api/openai_media.py); /v1/models lists the ids
each takes (the app id, its aliases, its model's own name). Errors come in OpenAI's shape
(api/openai_errors.py).

Every request is a job like any other (keys, quotas, the job list). Retries of one request land on
one job: by its Idempotency-Key, or for the openai SDK's own retries (which send none) by the same
body from the same client. A client that disconnects cancels its job; a non-stream wait ends before
the SDK's 600 s timeout with a retryable 503 whose retry keeps waiting for the same job."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from gpu_orchestrator.api import openai_format as oai
from gpu_orchestrator.api.deps import CallerDep, IdempotencyKey, Jobs, StreamsDep
from gpu_orchestrator.api.errors import ApiError
from gpu_orchestrator.core.apps import AppSpec, ParamsInvalid
from gpu_orchestrator.core.jobs import Job, JobStatus
from gpu_orchestrator.core.keys import Caller
from gpu_orchestrator.service.jobs import ClientGone, JobService

router = APIRouter(tags=["openai"])
RETRY_KEY_PREFIX = "gpu-orch:openai-retry:"
# A job an SDK retry may rejoin: one that can still answer.
REJOINABLE = (JobStatus.queued, JobStatus.running, JobStatus.succeeded)


def model_index(jobs: JobService) -> dict[str, AppSpec]:
    own = {name: m.init.get("model") for name, m in jobs.cfg.models.items()}
    return oai.model_index(jobs.apps.values(), own)


def resolve(jobs: JobService, model: str, task: str) -> AppSpec:
    """The app a request's `model` names, if it serves this task; else 404 naming the ids that do."""
    index = model_index(jobs)
    spec = index.get(model)
    if spec is None or spec.task != task:
        ids = sorted(k for k, a in index.items() if a.task == task)
        raise ApiError(404, "model_not_found", f"{model[:64]!r} is not a {task} model here (these are: {ids})",
                       field="model")
    return spec


@router.get("/v1/models")
async def models(jobs: Jobs, caller: CallerDep) -> dict[str, Any]:
    """The ids this key may use (a key limited to some apps sees theirs)."""
    return {"object": "list", "data": [oai.model_entry(k, a) for k, a in model_index(jobs).items()
                                       if caller.apps is None or a.id in caller.apps]}


@router.get("/v1/models/{model:path}")
async def model(model: str, jobs: Jobs, caller: CallerDep) -> dict[str, Any]:
    spec = model_index(jobs).get(model)
    if spec is None or (caller.apps is not None and spec.id not in caller.apps):
        raise ApiError(404, "model_not_found", f"no model {model[:64]!r} (GET /v1/models lists them)", field="model")
    return oai.model_entry(model, spec)


def renamed(e: ParamsInvalid, names: dict[str, str]) -> ApiError:
    """An app's parameter errors under the request's own field names (OpenAI's `param`)."""
    def name(field: str) -> str:  # params.messages[0].content -> messages[0].content
        path = field.removeprefix("params.")
        head = re.match(r"[^.\[]*", path).group()  # type: ignore[union-attr]
        return names.get(head, head) + path[len(head):]

    first, rest = e.errors[0], e.errors[1:]
    msg = "; ".join([first.message] + [f"{name(x.field)}: {x.message}" for x in rest])
    return ApiError(422, "invalid_params", msg, field=name(first.field))


async def job_for(jobs: JobService, spec: AppSpec, params: dict[str, Any], request: Request, key: str | None,
                  caller: Caller, submit: Callable[[str | None], Awaitable[Job]] | None = None,
                  fingerprint_params: dict[str, Any] | None = None, names: dict[str, str] | None = None) -> Job:
    """The request's job: submitted (`submit(idempotency_key)`, default a JSON submit of `params`),
    or the earlier job of the same request. `fingerprint_params`: what identifies the request when
    `params` cannot (an upload's content instead of its fresh URI)."""
    async def default(k: str | None) -> Job:
        job, _ = await jobs.submit(spec.id, params, idempotency_key=k, caller=caller)
        return job

    submit = submit or default
    try:
        if key is not None:
            return await submit(key)
        # No key: the SDK's retry of a request (same body, same client) rejoins the first one's job
        # while that job can still answer. Remembered in Redis, lossy: without it a retry runs anew.
        fp = RETRY_KEY_PREFIX + oai.fingerprint(spec.id, params if fingerprint_params is None else fingerprint_params,
                                                request.headers.get("authorization"),
                                                request.client.host if request.client else None)
        if oai.is_sdk_retry(request.headers.get("x-stainless-retry-count")):
            earlier = await jobs.recall(fp)
            if earlier is not None and earlier.status in REJOINABLE and earlier.owner == caller.owner:
                return earlier
        job = await submit(None)
    except ParamsInvalid as e:
        raise renamed(e, names or {}) from None
    await jobs.remember(fp, job.id, spec.timeout_s + 120)
    return job


async def finished(jobs: JobService, spec: AppSpec, job: Job, request: Request) -> Job:
    """The job once it has succeeded, waited for within the client's patience: a client that goes
    away cancels it; still running at the bound is a retryable 503, a failure a 502."""
    bound = oai.wait_bound_s(spec.timeout_s, request.headers.get("x-stainless-read-timeout"))
    try:
        with jobs.attached(job.id):
            done = await jobs.wait(job.id, bound, gone=request.is_disconnected)
    except (asyncio.CancelledError, ClientGone):
        # Serve cancels the request when its client disconnects; plain ASGI servers tell us through
        # is_disconnected. Either way nobody waits for the answer any more.
        jobs.cancel_soon(job.id, "client disconnected")
        raise  # ClientGone: a 499 nobody reads (api/errors.py)
    if not done.status.terminal:
        raise ApiError(503, "still_running",
                       f"job {done.id} is still {done.status.value} after {bound:g} s; retry the same request (same "
                       f"Idempotency-Key) to keep waiting for it", headers={"Retry-After": "1", "x-should-retry": "true"})
    if done.status != JobStatus.succeeded:
        raise ApiError(502, "generation_failed", f"job {done.id} {done.status.value}: {done.error}")
    return done


@router.post("/v1/chat/completions")
async def chat(req: oai.ChatRequest, request: Request, jobs: Jobs, streams: StreamsDep, caller: CallerDep,
               idempotency_key: IdempotencyKey = None) -> Any:
    """The same key as every other route (`api_key=` of the openai client is sent as a Bearer token)."""
    return await _answer(jobs, streams, resolve(jobs, req.model, "chat"), req.job_params(), req.model, req.stream,
                         request, idempotency_key, caller, ChatChunks, oai.completion)


@router.post("/v1/completions")
async def completions(req: oai.CompletionRequest, request: Request, jobs: Jobs, streams: StreamsDep,
                      caller: CallerDep, idempotency_key: IdempotencyKey = None) -> Any:
    """A chat app's answer to `prompt`, sent as one user turn (the model's chat template applies)."""
    spec = resolve(jobs, req.model, "chat")
    try:
        params = req.job_params()
    except ValueError as e:
        raise ApiError(422, "invalid_request", str(e), field="prompt") from None
    return await _answer(jobs, streams, spec, params, req.model, req.stream, request, idempotency_key, caller,
                         TextChunks, oai.text_completion)


async def _answer(jobs: JobService, streams: Any, spec: AppSpec, params: dict[str, Any], model: str, stream: bool,
                  request: Request, key: str | None, caller: Caller, chunks: type["ChatChunks"],
                  whole: Callable[[str, str, Any, int], dict[str, Any]]) -> Any:
    """A chat app's job for the request, streamed in `chunks`, or waited for and answered by `whole`."""
    if stream:
        streams.admit()
    job = await job_for(jobs, spec, params, request, key, caller)
    created = int(time.time())
    if stream:
        return StreamingResponse(streams.counted(_stream(jobs, job.id, chunks(str(job.id), model, created))),
                                 media_type="text/event-stream")
    done = await finished(jobs, spec, job, request)
    return whole(str(done.id), model, done.result, created)


class ChatChunks:
    def __init__(self, job_id: str, model: str, created: int):
        self.job_id, self.model, self.created = job_id, model, created

    def first(self) -> str | None:
        return oai.chunk(self.job_id, self.model, self.created, {"role": "assistant", "content": ""})

    def text(self, text: str) -> str:
        return oai.chunk(self.job_id, self.model, self.created, {"content": text})

    def end(self, finish_reason: str) -> str:
        return oai.chunk(self.job_id, self.model, self.created, {}, finish_reason)


class TextChunks(ChatChunks):
    def first(self) -> str | None:
        return None

    def text(self, text: str) -> str:
        return oai.text_chunk(self.job_id, self.model, self.created, text)

    def end(self, finish_reason: str) -> str:
        return oai.text_chunk(self.job_id, self.model, self.created, "", finish_reason)


async def _stream(jobs: JobService, job_id: uuid.UUID, chunks: ChatChunks) -> AsyncIterator[str]:
    finished = False
    streamed = ""
    events = jobs.follow(job_id)
    try:
        if (first := chunks.first()) is not None:
            yield first
        async for ev in events:
            if ev is None or ev.type == "gap":
                continue
            if ev.type == "progress" and "token" in ev.data:
                streamed += ev.data["token"]
                yield chunks.text(ev.data["token"])
            elif ev.terminal:
                finished = True
                if ev.data["status"] == "succeeded":
                    result = ev.data.get("result") or {}
                    text = result.get("text") or ""
                    if text.startswith(streamed) and len(text) > len(streamed):
                        # Tokens lost while Redis was away: the rest of the text, from the job row.
                        yield chunks.text(text[len(streamed):])
                    yield chunks.end(result.get("finish_reason", "stop"))
                else:
                    err = {"error": {"message": f"job {job_id} {ev.data['status']}: {ev.data.get('error')}",
                                     "type": "server_error", "param": None, "code": "generation_failed"}}
                    yield f"data: {json.dumps(err)}\n\n"
                yield "data: [DONE]\n\n"
                return
    finally:
        # Schedule the cancel first: a close that raises (or is cancelled) must not skip it.
        if not finished:  # the client went away mid-stream: stop the generation
            jobs.cancel_soon(job_id, "client disconnected from the stream")
        await events.aclose()  # type: ignore[attr-defined]
