"""The router deployment: job intake over HTTP (FastAPI ingress) and Python handle methods, job
state in Postgres, events over Redis, and the dispatcher that feeds the model deployments.

`Router` is undecorated; `RouterIngress` is it with the FastAPI ingress, and gpu_orchestrator.serve.app
wraps that with serve.deployment(...) options from the config.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import time
import uuid
from typing import Annotated, Any, AsyncIterator

from fastapi import FastAPI, File, Header, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from gpu_orchestrator.artifacts import ArtifactError, ArtifactStore, content_id, http_path, serve_headers
from gpu_orchestrator.core.config import OrchestratorConfig, parse_config
from gpu_orchestrator.bus.events import REDIS_ERRORS, AsyncEventBus, follow, reason
from gpu_orchestrator.core.jobs import IdempotencyConflict, Job, JobError, JobStatus
from gpu_orchestrator.core.apps import (AppKind, AppSpec, ParamError, ParamsInvalid, text_problem, validate_params)
from gpu_orchestrator.store.postgres import JobStore
from gpu_orchestrator.api import openai_format as oai
from gpu_orchestrator.bus import workers as worker_beats

from gpu_orchestrator.service.dispatcher import Dispatcher
from gpu_orchestrator.api.errors import ApiError, BodyLimit, check_idempotency_key, check_last_event_id, install

log = logging.getLogger("gpu_orchestrator.router")

_limits = {"max_body_bytes": 1_048_576, "max_upload_bytes": 200 * 1_048_576}
PRIORITY_MIN, PRIORITY_MAX = -100, 100
# An event stream ends after this long with a `retry:` hint; clients resume with Last-Event-ID.
SSE_RETRY_MS = 1000
# SSE and streamed chat responses per router replica beyond which new ones get 503 + Retry-After
# (default: half the replica's max_ongoing_requests, so streams never starve submits).
STREAMS_RETRY_AFTER_S = 5
_SMALL_INT = re.compile(r"[+-]?[0-9]{1,6}")
UPLOAD_PATHS = ("/v1/artifacts", "/v1/jobs/multipart")
app = FastAPI(
    title="GPU Orchestrator",
    description="Jobs for many AI models on shared GPUs. Submit, watch progress (SSE), cancel.",
    version="0.1.0",
)
app.add_middleware(BodyLimit, limit=lambda: _limits["max_body_bytes"],
                   upload_limit=lambda: _limits["max_upload_bytes"], upload_paths=UPLOAD_PATHS)
install(app)


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app_id: str = Field(description="id of an app from GET /v1/apps", min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict, description="validated against the app's parameter schema")
    priority: int = Field(default=0, ge=PRIORITY_MIN, le=PRIORITY_MAX, description="higher runs first within an app's queue")


class SubmitResponse(BaseModel):
    job_id: str
    status: str


JobId = Annotated[uuid.UUID, "a job id (UUID)"]
# Checked by check_idempotency_key (1-255 printable ASCII), so the 422 names the header.
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


class _Metrics:
    """Counters and a gauge through ray.serve.metrics, so they show in Ray's Prometheus endpoint."""

    def __init__(self) -> None:
        from ray.serve import metrics

        tags = ("app_id",)
        self.submitted = metrics.Counter("gpu_orch_jobs_submitted", description="jobs accepted", tag_keys=tags)
        self.succeeded = metrics.Counter("gpu_orch_jobs_succeeded", description="jobs succeeded", tag_keys=tags)
        self.failed = metrics.Counter("gpu_orch_jobs_failed", description="jobs failed", tag_keys=tags)
        self.cancelled = metrics.Counter("gpu_orch_jobs_cancelled", description="jobs cancelled", tag_keys=tags)
        self.queue_depth = metrics.Gauge("gpu_orch_queue_depth", description="queued jobs per app", tag_keys=tags)
        model = ("model",)
        self.loads = metrics.Counter("gpu_orch_model_loads", description="arbiter scale-ups from zero (swaps in)", tag_keys=model)
        self.evictions = metrics.Counter("gpu_orch_model_evictions", description="arbiter scale-downs to zero (swaps out, idle TTL)", tag_keys=model)
        self.load_seconds = metrics.Histogram(
            "gpu_orch_model_load_seconds", description="time from the arbiter's load decision to a running replica",
            boundaries=[0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300], tag_keys=model,
        )

    def finished(self, app_id: str, status: str) -> None:
        counter = {"succeeded": self.succeeded, "failed": self.failed, "cancelled": self.cancelled}[status]
        counter.inc(tags={"app_id": app_id})


class Router:
    def __init__(self, config: dict[str, Any], models: dict[str, Any], database_url: str, redis_url: str,
                 artifacts_url: str | None = None):
        self.cfg: OrchestratorConfig = parse_config(config)
        _limits["max_body_bytes"] = self.cfg.router.max_body_bytes
        _limits["max_upload_bytes"] = self.cfg.router.max_upload_bytes
        self.artifacts = ArtifactStore(artifacts_url) if artifacts_url else None
        self.apps: dict[str, AppSpec] = {a.id: a for a in self.cfg.apps}
        self.store = JobStore.connect(database_url)
        # A slow Redis costs a request at most this long (then it is treated as down for a moment).
        self.bus = AsyncEventBus(redis_url, timeout_s=self.cfg.router.redis_timeout_s)
        self.models = models
        self.metrics = _Metrics()
        self.owner = f"router:{_replica_id()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.max_streams = self.cfg.router.max_streams or max(1, self.cfg.router.max_ongoing_requests // 2)
        self.max_stream_s = self.cfg.router.max_stream_s
        self.streams = 0  # open SSE / streamed chat responses on this replica
        self._attached: dict[uuid.UUID, int] = {}  # OpenAI requests waiting on each job here
        self._tasks: set[asyncio.Task] = set()
        self.arbiter = None
        if self.cfg.arbiter.enabled:
            from gpu_orchestrator.service.arbiter_loop import ArbiterLoop

            self.arbiter = ArbiterLoop(cfg=self.cfg, store=self.store, redis=self.bus.r, owner=self.owner,
                                       app_name=_app_name(), metrics=self.metrics, on_change=lambda: self.dispatcher.poke())
        self.dispatcher = Dispatcher(
            cfg=self.cfg, store=self.store, bus=self.bus, models=models, owner=self.owner, on_finished=self.metrics.finished,
            gate=self.arbiter.dispatchable if self.arbiter else None,
            refuse=self.arbiter.unplaceable if self.arbiter else None,
        )
        self._started = False
        try:
            asyncio.get_running_loop()
            self._ensure_started()
        except RuntimeError:
            pass  # no loop yet: started on the first request or handle call

    def _ensure_started(self) -> None:
        if not self._started:
            self._started = True
            self.dispatcher.start()
            if self.arbiter is not None:
                self.arbiter.start()
            asyncio.get_running_loop().create_task(self._gauge_loop())

    async def _gauge_loop(self) -> None:
        while True:
            stats = self.dispatcher.queue_stats
            for app_id in self.apps:
                s = stats.get(app_id)
                self.metrics.queue_depth.set(s.queued if s else 0, tags={"app_id": app_id})
            await asyncio.sleep(2.0)

    async def __del__(self) -> None:
        """Serve awaits this when it stops the replica gracefully (rolling update, downscale): the
        leases this router holds go back at once instead of expiring a lease_s later."""
        release = getattr(getattr(self, "dispatcher", None), "release_all", None)
        if release is None:
            return
        try:
            await asyncio.wait_for(release(), timeout=10.0)
        except Exception as e:  # the leases still expire on their own
            log.warning("could not release leases on shutdown: %s", reason(e))

    # -- core operations (shared by HTTP and handle methods) --------------------------------------

    def _runnable_app(self, app_id: Any) -> AppSpec:
        """The app's spec, or a 4xx naming app_id: unknown, or no backend can run it (jobs that would
        otherwise wait forever)."""
        if not isinstance(app_id, str) or not app_id:
            raise ApiError(422, "invalid_request", "is required (a string)", field="app_id")
        why = text_problem(app_id)
        if why:
            raise ApiError(422, "invalid_request", why, field="app_id")
        spec = self.apps.get(app_id)
        if spec is None:
            raise ApiError(422, "unknown_app", f"unknown app {app_id[:64]!r} (known: {sorted(self.apps)})", field="app_id")
        if spec.kind != AppKind.local:
            raise ApiError(422, "app_not_runnable", f"app {app_id!r} is a {spec.kind.value} app and this orchestrator has "
                           f"no {spec.kind.value} backend yet; its jobs could never run", field="app_id")
        if spec.deployment not in self.cfg.models or spec.deployment not in self.models:
            raise ApiError(422, "app_not_runnable", f"app {app_id!r} needs model deployment {spec.deployment!r}, which "
                           f"this orchestrator does not run", field="app_id")
        return spec

    async def _submit(self, app_id: str, params: Any, priority: int = 0, idempotency_key: str | None = None) -> tuple[Job, bool]:
        self._ensure_started()
        spec = self._runnable_app(app_id)
        key = check_idempotency_key(idempotency_key)
        if isinstance(priority, bool) or not isinstance(priority, int) or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            raise ApiError(422, "invalid_request", f"must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}", field="priority")
        clean = validate_params(spec, params)
        await asyncio.to_thread(self._check_artifacts, spec, clean)
        job, created = await asyncio.to_thread(
            self.store.submit,
            app_id=app_id,
            params=clean,
            priority=priority,
            max_attempts=spec.max_attempts,
            timeout_s=spec.timeout_s,
            idempotency_key=key,
            idempotency_ttl_s=self.cfg.router.idempotency_ttl_s,
            max_queued=spec.max_queued,
        )
        if not created and job.app_id != app_id:  # a key is one request: never another app's job
            raise IdempotencyConflict(app_id, key or "", job.id)
        if created:
            self.metrics.submitted.inc(tags={"app_id": app_id})
            await self.bus.try_publish(job.id, "status", status="queued")
            self.dispatcher.poke()
        return job, created

    def _check_artifacts(self, spec: AppSpec, params: dict[str, Any]) -> None:
        errors = []
        for p in spec.parameters:
            if p.type == "file" and p.name in params:
                try:
                    if self.artifacts is None or not self.artifacts.exists(params[p.name]):
                        errors.append(ParamError(f"params.{p.name}", f"artifact {params[p.name]} not found"))
                except ArtifactError as e:
                    errors.append(ParamError(f"params.{p.name}", str(e)))
        if errors:
            raise ParamsInvalid(errors)

    async def _get(self, job_id: uuid.UUID) -> Job:
        return await asyncio.to_thread(self.store.get, job_id)

    async def _row_status(self, job_id: uuid.UUID) -> dict[str, Any] | None:
        """The terminal status from the job row (for `follow`), or None while the job runs."""
        job = await self._get(job_id)
        return {"status": job.status.value, "result": job.result, "error": job.error} if job.status.terminal else None

    async def _cancel(self, job_id: uuid.UUID) -> Job:
        self._ensure_started()
        job, prev = await asyncio.to_thread(self.store.cancel, job_id)
        self.metrics.finished(job.app_id, "cancelled")
        # The cancel is committed; what follows only hurries the model along and tells watchers, so
        # a Redis outage must not turn it into an error (SSE watchers also read the row).
        if prev == JobStatus.running:
            try:
                await self.bus.request_cancel(job_id)  # the model checks this flag between steps
            except REDIS_ERRORS as e:
                log.warning("cancel flag for job %s not set: redis %s", job_id, reason(e))
            self.dispatcher.cancel_local(job_id)  # the replica holding it also cancels the request
        await self.bus.try_publish(job_id, "status", status="cancelled")
        return job

    def _cancel_soon(self, job_id: uuid.UUID, why: str) -> None:
        """Cancel a job in the background (from a request being torn down), unless it is over or
        another request on this replica still waits for it."""
        if self._attached.get(job_id):
            return

        async def go() -> None:
            try:
                job = await self._get(job_id)
                if not job.status.terminal:
                    await self._cancel(job_id)
                    log.info("job %s cancelled: %s", job_id, why)
            except JobError:
                pass  # finished meanwhile
            except Exception as e:
                log.warning("could not cancel job %s (%s): %s", job_id, why, reason(e))

        task = asyncio.get_running_loop().create_task(go())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait_terminal(self, job_id: uuid.UUID, timeout_s: float, gone: Any = None) -> Job:
        """The job once terminal, or as it is after timeout_s. `gone` (an async callable) is polled
        about twice a second; when it says the client left, _ClientGone is raised."""
        deadline = time.monotonic() + timeout_s
        next_check = 0.0
        async for ev in follow(self.bus, job_id, "0-0", row_status=functools.partial(self._row_status, job_id),
                               block_ms=500, retry_s=0.5):
            if ev is not None and ev.terminal:
                break
            now = time.monotonic()
            if now > deadline:
                break
            if gone is not None and now >= next_check:
                next_check = now + 0.5
                if await gone():
                    raise _ClientGone()
        return await self._get(job_id)

    # -- HTTP ---------------------------------------------------------------------------------------

    @app.post("/v1/jobs", status_code=202, response_model=SubmitResponse, tags=["jobs"])
    async def http_submit(self, req: SubmitRequest, idempotency_key: IdempotencyKey = None) -> Any:
        job, created = await self._submit(req.app_id, req.params, req.priority, idempotency_key)
        payload = {"job_id": str(job.id), "status": job.status.value}
        return payload if created else JSONResponse(status_code=200, content=payload)

    @app.post("/v1/jobs/multipart", status_code=202, response_model=SubmitResponse, tags=["jobs"])
    async def http_submit_multipart(self, request: Request, idempotency_key: IdempotencyKey = None) -> Any:
        """Submit with files: form fields app_id, params (a JSON object), priority, and one file
        field per `file` parameter of the app. Everything is validated before any file is stored."""
        check_idempotency_key(idempotency_key)
        form = await request.form(max_files=32, max_fields=32)
        spec = self._runnable_app(form.get("app_id"))
        try:
            params = json.loads(form.get("params") or "{}")
        except (ValueError, TypeError) as e:
            raise ApiError(422, "invalid_request", f"must be a JSON object: {e}", field="params") from None
        if not isinstance(params, dict):
            raise ApiError(422, "invalid_request", "must be a JSON object", field="params")
        priority = form.get("priority") or "0"
        if not isinstance(priority, str) or not _SMALL_INT.fullmatch(priority.strip()):
            raise ApiError(422, "invalid_request", f"must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}", field="priority")
        priority = int(priority)  # the range is checked with the JSON route's, in _submit
        files = {k: v for k, v in form.multi_items() if hasattr(v, "filename") and hasattr(v, "read")}
        file_params = {p.name for p in spec.parameters if p.type == "file"}
        for name in files:
            if name not in file_params:
                raise ApiError(422, "invalid_params", f"not a file parameter of app {spec.id!r} (file parameters: "
                               f"{sorted(file_params)})", field=f"params.{name}")
        if files and self.artifacts is None:
            raise ApiError(503, "no_artifact_store", "this router has no artifact store configured")
        # Validate everything (file formats included, via placeholder URIs) before storing a byte, so
        # a refused request leaves no file behind.
        pending = {name: f"artifact://pending/{upload.filename or name}" for name, upload in files.items()}
        validate_params(spec, {**params, **pending})
        stored: list[str] = []
        try:
            for name, upload in files.items():
                # With an Idempotency-Key, the same file under the same key gets the same URI, so a
                # retried request has the same params and finds its job (not a 409).
                uid = await asyncio.to_thread(content_id, upload.file, spec.id, idempotency_key, name) \
                    if idempotency_key else None
                uri, _, created = await asyncio.to_thread(self.artifacts.put_file, upload.file, prefix="uploads",
                                                          name=upload.filename or name, id=uid)
                if created:
                    stored.append(uri)
                params[name] = uri
            job, job_created = await self._submit(spec.id, params, priority, idempotency_key)
        except Exception:  # a refusal: nothing left behind. Not on a cancel: the job may be committed already
            await asyncio.to_thread(self._delete_artifacts, stored)
            raise
        payload = {"job_id": str(job.id), "status": job.status.value}
        return payload if job_created else JSONResponse(status_code=200, content=payload)

    def _delete_artifacts(self, uris: list[str]) -> None:
        for uri in uris:
            try:
                self.artifacts.delete(uri)
            except Exception as e:
                log.warning("could not remove %s: %s", uri, e)

    @app.post("/v1/artifacts", status_code=201, tags=["artifacts"])
    async def http_upload(self, file: UploadFile = File(...)) -> dict[str, Any]:
        """Store a file (audio, image) for use as a `file` parameter; returns its artifact URI."""
        if self.artifacts is None:
            raise ApiError(503, "no_artifact_store", "this router has no artifact store configured")
        # The multipart parser spooled the upload to a temporary file; it is copied in chunks.
        uri, size, _ = await asyncio.to_thread(self.artifacts.put_file, file.file, name=file.filename or "file", prefix="uploads")
        return {"artifact": uri, "url": http_path(uri), "size": size, "content_type": file.content_type}

    @app.get("/v1/artifacts/{key:path}", tags=["artifacts"])
    async def http_artifact(self, key: str) -> Response:
        """An artifact's bytes, streamed. Generated images/audio inline; uploads and any other type as
        attachments, always with X-Content-Type-Options: nosniff."""
        if self.artifacts is None:
            raise ApiError(404, "not_found", "no artifact store configured")
        uri = "artifact://" + key
        try:
            size = await asyncio.to_thread(self.artifacts.size, uri)
        except ArtifactError as e:  # not found on any backend, or not a valid key
            raise ApiError(404, "artifact_not_found", str(e), field="key") from None
        ctype, headers = serve_headers(self.artifacts.key(uri), self.artifacts.content_type(uri))
        if self.artifacts.local:
            return FileResponse(self.artifacts.root / self.artifacts.key(uri), media_type=ctype, headers=headers)
        headers["Content-Length"] = str(size)
        return StreamingResponse(self.artifacts.iter_chunks(uri), media_type=ctype, headers=headers)

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    async def http_get(self, job_id: uuid.UUID) -> dict[str, Any]:
        return (await self._get(job_id)).to_api()

    @app.get("/v1/jobs", tags=["jobs"])
    async def http_list(
        self,
        app_id: str | None = None,
        status: JobStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        for field, value in (("app_id", app_id), ("cursor", cursor)):
            if value is not None and text_problem(value):
                raise ApiError(422, "invalid_request", text_problem(value), field=field)
        try:
            jobs, nxt = await asyncio.to_thread(self.store.list, app_id=app_id, status=status, limit=limit, cursor=cursor)
        except ValueError as e:
            raise ApiError(422, "invalid_request", str(e), field="cursor") from None
        return {"jobs": [j.to_api() for j in jobs], "next_cursor": nxt}

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"])
    async def http_cancel(self, job_id: uuid.UUID) -> dict[str, Any]:
        return (await self._cancel(job_id)).to_api()

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"])
    async def http_events(
        self,
        job_id: uuid.UUID,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> StreamingResponse:
        """Server-Sent Events: progress and status; resume with the Last-Event-ID header. A stream
        ends at the terminal status, or after a time limit with a `retry:` hint (resume then)."""
        after = check_last_event_id(last_event_id)
        await self._get(job_id)  # 404 before the stream starts
        self._admit_stream()
        return StreamingResponse(self._counted(self._sse(job_id, after)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _admit_stream(self) -> None:
        if self.streams >= self.max_streams:
            raise ApiError(503, "too_many_streams", f"this router replica serves {self.max_streams} event streams at most; "
                           f"retry shortly", headers={"Retry-After": str(STREAMS_RETRY_AFTER_S)})

    async def _counted(self, gen: AsyncIterator[str]) -> AsyncIterator[str]:
        self.streams += 1
        try:
            async for chunk in gen:
                yield chunk
        finally:
            self.streams -= 1
            await gen.aclose()

    async def _sse(self, job_id: uuid.UUID, after: str) -> AsyncIterator[str]:
        ends_at = time.monotonic() + self.max_stream_s
        async for ev in follow(self.bus, job_id, after, row_status=functools.partial(self._row_status, job_id)):
            if ev is None:
                yield ": keep-alive\n\n"
            else:
                yield ev.to_sse()
                if ev.terminal:
                    return
            if time.monotonic() > ends_at:
                yield (f"retry: {SSE_RETRY_MS}\n: stream time limit ({self.max_stream_s:g} s) reached; "
                       f"reconnect with Last-Event-ID\n\n")
                return

    @app.get("/v1/apps", tags=["apps"])
    async def http_apps(self) -> dict[str, Any]:
        return {"apps": [a.model_dump(mode="json") for a in self.cfg.apps]}

    @app.get("/v1/workers", tags=["workers"])
    async def http_workers(self) -> dict[str, Any]:
        out: dict[str, Any] = {"models": await self._workers()}
        if self.arbiter is not None:
            s = self.arbiter.snapshot
            out["arbiter"] = None if s is None else {
                "leader": s.leader, "decided_at": s.ts, "targets": s.targets, "dispatchable": s.dispatchable,
                "draining": s.draining, "reasons": s.reasons,
            }
        return out

    @app.get("/healthz", tags=["health"])
    async def healthz(self) -> JSONResponse:
        """What is down, by a short reason ("connection refused", "timeout"), never the raw error.
        503 when the database is down (nothing works without it); Redis down is "degraded": jobs
        still run, only live progress events are lost."""
        checks: dict[str, str] = {}
        reasons: dict[str, str] = {}
        try:
            await asyncio.wait_for(asyncio.to_thread(self._db_ping), timeout=5.0)
            checks["database"] = "ok"
        except Exception as e:
            checks["database"], reasons["database"] = "down", reason(e)
        try:
            await self.bus.ping()
            checks["redis"] = "ok"
        except Exception as e:
            checks["redis"], reasons["redis"] = "down", reason(e)
        ok = all(v == "ok" for v in checks.values())
        content: dict[str, Any] = {"status": "ok" if ok else "degraded", **checks}
        if reasons:
            content["reasons"] = reasons
        return JSONResponse(status_code=503 if checks["database"] != "ok" else 200, content=content)

    def _db_ping(self) -> None:
        import sqlalchemy as sa

        with self.store.engine.connect() as c:
            c.execute(sa.text("SELECT 1"))

    # OpenAI-compatible API for chat apps (`task: chat`): any OpenAI client works against /v1.
    @app.get("/v1/models", tags=["openai"])
    async def openai_models(self) -> dict[str, Any]:
        return oai.models_list([a.id for a in self.cfg.apps if a.task == "chat"])

    @app.post("/v1/chat/completions", tags=["openai"])
    async def openai_chat(self, req: oai.ChatRequest, request: Request, idempotency_key: IdempotencyKey = None) -> Any:
        """Chat completions. Retries of one request land on one job: by its Idempotency-Key, or for the
        openai SDK's own retries (which send none) by the same body from the same client. A client
        that disconnects cancels its job; a non-stream wait ends before the SDK's 600 s timeout with
        a retryable 503 whose retry keeps waiting for the same job."""
        spec = self.apps.get(req.model)
        if spec is None or spec.task != "chat":
            chat = [a.id for a in self.cfg.apps if a.task == "chat"]
            raise ApiError(404, "model_not_found", f"{req.model[:64]!r} is not a chat app (chat apps: {chat})", field="model")
        if req.stream:
            self._admit_stream()
        job = await self._openai_job(spec, req, request, idempotency_key)
        created = int(time.time())
        if req.stream:
            return StreamingResponse(self._counted(self._chat_stream(job.id, req.model, created)), media_type="text/event-stream")
        bound = oai.wait_bound_s(spec.timeout_s, request.headers.get("x-stainless-read-timeout"))
        self._attached[job.id] = self._attached.get(job.id, 0) + 1
        try:
            done = await self._wait_terminal(job.id, bound, gone=request.is_disconnected)
        except BaseException as e:
            self._detach(job.id)
            # Serve cancels the request when its client disconnects; plain ASGI servers tell us through
            # is_disconnected. Either way nobody waits for the answer any more.
            if isinstance(e, (asyncio.CancelledError, _ClientGone)):
                self._cancel_soon(job.id, "client disconnected")
            if isinstance(e, _ClientGone):
                return Response(status_code=499)  # nobody reads it
            raise
        self._detach(job.id)
        if not done.status.terminal:
            raise ApiError(503, "still_running",
                           f"job {done.id} is still {done.status.value} after {bound:g} s; retry the same request (same "
                           f"Idempotency-Key) to keep waiting for it", headers={"Retry-After": "1", "x-should-retry": "true"})
        if done.status != JobStatus.succeeded:
            raise ApiError(502, "generation_failed", f"job {done.id} {done.status.value}: {done.error}")
        return oai.completion(str(done.id), req.model, done.result, created)

    def _detach(self, job_id: uuid.UUID) -> None:
        n = self._attached.get(job_id, 0) - 1
        if n > 0:
            self._attached[job_id] = n
        else:
            self._attached.pop(job_id, None)

    async def _openai_job(self, spec: AppSpec, req: oai.ChatRequest, request: Request, key: str | None) -> Job:
        params = req.job_params()
        if key is not None:
            job, _ = await self._submit(spec.id, params, idempotency_key=key)
            return job
        # No key: the SDK's retry of a request (same body, same client) rejoins the first one's job
        # while that job can still answer. Remembered in Redis, lossy: without it a retry runs anew.
        fp = "gpu-orch:openai-retry:" + oai.fingerprint(spec.id, params, request.headers.get("authorization"),
                                                        request.client.host if request.client else None)
        if oai.is_sdk_retry(request.headers.get("x-stainless-retry-count")):
            try:
                earlier = await self.bus.get_value(fp)
                if earlier:
                    job = await self._get(uuid.UUID(earlier))
                    if job.status in (JobStatus.queued, JobStatus.running, JobStatus.succeeded):
                        return job
            except (REDIS_ERRORS + (JobError, ValueError)) as e:
                log.info("openai retry not matched to a job: %s", reason(e) if isinstance(e, REDIS_ERRORS) else e)
        job, _ = await self._submit(spec.id, params)
        try:
            await self.bus.set_value(fp, str(job.id), int(spec.timeout_s + 120))
        except REDIS_ERRORS as e:
            log.info("openai retry key not stored: redis %s", reason(e))
        return job

    async def _chat_stream(self, job_id: uuid.UUID, model: str, created: int) -> AsyncIterator[str]:
        finished = False
        streamed = ""
        try:
            yield oai.chunk(str(job_id), model, created, {"role": "assistant", "content": ""})
            async for ev in follow(self.bus, job_id, "0-0", row_status=functools.partial(self._row_status, job_id)):
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
            if not finished:  # the client went away mid-stream: stop the generation
                self._cancel_soon(job_id, "client disconnected from the stream")

    # Seed-compatible aliases (the original Go orchestrator's shapes).
    @app.post("/submit", status_code=202, tags=["seed-compatible"])
    async def seed_submit(self, req: SubmitRequest, idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
        job, _ = await self._submit(req.app_id, req.params, req.priority, idempotency_key)
        return {"job_id": str(job.id), "status": job.status.value}

    @app.get("/status/{job_id}", tags=["seed-compatible"])
    async def seed_status(self, job_id: uuid.UUID) -> dict[str, Any]:
        j = (await self._get(job_id)).to_api()
        return {k: j[k] for k in ("job_id", "app_id", "status", "result", "error", "created_at", "finished_at")}

    @app.get("/workers", tags=["seed-compatible"])
    async def seed_workers(self) -> dict[str, Any]:
        out = []
        for m in await self._workers():
            for r in m["replicas"]:
                for app_id in m["apps"]:
                    out.append({"worker_id": r["replica_id"], "app_id": app_id, "status": r["state"],
                                "last_heartbeat": r.get("last_heartbeat")})
        return {"count": len(out), "workers": out}

    async def _workers(self) -> list[dict[str, Any]]:
        try:
            beats = await worker_beats.read_all(self.bus.r)
        except REDIS_ERRORS as e:  # heartbeats live in Redis: without it, Serve's view alone
            log.warning("worker heartbeats unavailable: redis %s", reason(e))
            beats = []
        serve_states = await asyncio.to_thread(_serve_replica_states)
        stats = await asyncio.to_thread(self.store.queue_stats)
        out = []
        snap = self.arbiter.snapshot if self.arbiter is not None else None
        for name, spec in self.cfg.models.items():
            apps = [a.id for a in self.cfg.apps if a.deployment == name]
            replicas = [b for b in beats if b.get("deployment") == name]
            arb = (snap.models.get(name) if snap else None) or {}
            held = [r.get("vram_held_gb") for r in replicas if r.get("vram_held_gb") is not None]
            load_errors = [r["load_error"] for r in replicas if r.get("load_error")]
            loads = [r["load_time_s"] for r in replicas if r.get("load_time_s") is not None]
            failed = bool(replicas) and len(load_errors) == len(replicas)
            out.append({
                # A replica up but unable to load its model is "failed" whatever Serve says.
                "state": "failed" if failed else (arb.get("state") or _plain_state(serve_states.get(name, {}))),
                "load_error": load_errors[0] if load_errors else None,
                "load_time_s": max(loads) if loads else None,
                "vram_held_gb": sum(held) if held else None,
                "last_used": max((r.get("last_used") or 0 for r in replicas), default=None) or None,
                "arbiter": arb or None,
                "deployment": name,
                "impl": spec.impl,
                "synthetic": any(self.apps[a].synthetic for a in apps),
                "apps": apps,
                "target_replicas": arb.get("target", spec.num_replicas),
                "replica_states": serve_states.get(name, {}),
                "replicas": replicas,
                "queued": sum(stats[a].queued for a in apps if a in stats),
                "running": sum(stats[a].running for a in apps if a in stats),
                "vram_declared_gb": self.cfg.model_vram_gb(name),
            })
        return out

    # -- Python handle methods --------------------------------------------------------------------

    async def submit(self, app_id: str, params: dict[str, Any] | None = None, priority: int = 0,
                     idempotency_key: str | None = None) -> dict[str, Any]:
        job, _ = await self._submit(app_id, params or {}, priority, idempotency_key)
        return job.to_api()

    async def get(self, job_id: str | uuid.UUID) -> dict[str, Any]:
        return (await self._get(_uuid(job_id))).to_api()

    async def cancel(self, job_id: str | uuid.UUID) -> dict[str, Any]:
        return (await self._cancel(_uuid(job_id))).to_api()

    async def wait(self, job_id: str | uuid.UUID, timeout_s: float = 600.0) -> dict[str, Any]:
        """Block until the job is terminal (or timeout_s passes) and return it. Follows the event
        stream, and the job row while Redis is unavailable."""
        return (await self._wait_terminal(_uuid(job_id), timeout_s)).to_api()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve calls this on every router replica; the arbiter leader's targets ride along to the
        application-level autoscaling policy (serve_apps/autoscaling.py)."""
        self._ensure_started()
        return self.arbiter.autoscaling_stats() if self.arbiter is not None else {}

    def owner_id(self) -> str:
        return self.owner

    def pid(self) -> int:
        return os.getpid()


def _ingress() -> type:
    # Applied at import time, in every process: the class-based-view rewrite of `app`'s routes must
    # happen where the replica imports this module (a rewrite done in the driver is not pickled).
    from ray import serve

    return serve.ingress(app)(Router)


RouterIngress = _ingress()


def _uuid(v: str | uuid.UUID) -> uuid.UUID:
    if isinstance(v, uuid.UUID):
        return v
    try:
        return uuid.UUID(str(v))
    except ValueError:
        raise ValueError(f"job_id {v!r} is not a UUID") from None


class _ClientGone(Exception):
    """The HTTP client of a waiting request disconnected."""

    def __init__(self) -> None:
        super().__init__("client disconnected")


def _app_name() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().app_name
    except Exception:
        return "orchestrator"


def _replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return "local"


def _plain_state(states: dict[str, int]) -> str:
    """Without the arbiter: resident when a replica runs, loading while one starts, else cold."""
    if states.get("RUNNING"):
        return "resident"
    if states.get("STARTING") or states.get("UPDATING"):
        return "loading"
    return "cold"


def _serve_replica_states() -> dict[str, dict[str, int]]:
    """Per deployment name of this application: replica counts by state, from Serve's own status."""
    try:
        from gpu_orchestrator.service.arbiter_loop import _serve_states

        return _serve_states(_app_name())
    except Exception as e:
        log.debug("serve.status() failed: %s", e)
        return {}
