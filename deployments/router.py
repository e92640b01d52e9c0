"""The router deployment: job intake over HTTP (FastAPI ingress) and Python handle methods, job
state in Postgres, events over Redis, and the dispatcher that feeds the model deployments.

`Router` is undecorated; `RouterIngress` is it with the FastAPI ingress, and serve_apps.orchestrator
wraps that with serve.deployment(...) options from the config.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from gpu_orchestrator.artifacts import ArtifactError, ArtifactStore, http_path
from gpu_orchestrator.config import OrchestratorConfig, parse_config
from gpu_orchestrator.events import AsyncEventBus, Event
from gpu_orchestrator.jobs import Job, JobStatus
from gpu_orchestrator.registry import AppSpec, ParamError, ParamsInvalid, check_file_format, validate_params
from gpu_orchestrator.store import JobStore
from gpu_orchestrator import openai_format as oai
from gpu_orchestrator import workers as worker_beats

from .dispatcher import Dispatcher
from .http_errors import ApiError, BodyLimit, install

log = logging.getLogger("gpu_orchestrator.router")

_limits = {"max_body_bytes": 1_048_576, "max_upload_bytes": 200 * 1_048_576}
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
    priority: int = Field(default=0, ge=-100, le=100, description="higher runs first within an app's queue")


class SubmitResponse(BaseModel):
    job_id: str
    status: str


JobId = Annotated[uuid.UUID, "a job id (UUID)"]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]


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
        self.bus = AsyncEventBus(redis_url)
        self.models = models
        self.metrics = _Metrics()
        self.owner = f"router:{_replica_id()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.arbiter = None
        if self.cfg.arbiter.enabled:
            from .arbiter_loop import ArbiterLoop

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

    # -- core operations (shared by HTTP and handle methods) --------------------------------------

    async def _submit(self, app_id: str, params: Any, priority: int = 0, idempotency_key: str | None = None) -> tuple[Job, bool]:
        self._ensure_started()
        spec = self.apps.get(app_id)
        if spec is None:
            raise ApiError(422, "unknown_app", f"unknown app {app_id!r} (known: {sorted(self.apps)})", field="app_id")
        clean = validate_params(spec, params)
        await asyncio.to_thread(self._check_artifacts, spec, clean)
        job, created = await asyncio.to_thread(
            self.store.submit,
            app_id=app_id,
            params=clean,
            priority=priority,
            max_attempts=spec.max_attempts,
            timeout_s=spec.timeout_s,
            idempotency_key=idempotency_key,
            max_queued=spec.max_queued,
        )
        if created:
            self.metrics.submitted.inc(tags={"app_id": app_id})
            try:
                await self.bus.publish(job.id, "status", status="queued")
            except Exception as e:
                log.warning("could not publish queued event: %s", e)
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

    async def _cancel(self, job_id: uuid.UUID) -> Job:
        self._ensure_started()
        job, prev = await asyncio.to_thread(self.store.cancel, job_id)
        self.metrics.finished(job.app_id, "cancelled")
        if prev == JobStatus.running:
            # The model checks this flag between steps; the replica holding it also cancels the request.
            await self.bus.request_cancel(job_id)
            self.dispatcher.cancel_local(job_id)
        await self.bus.publish(job_id, "status", status="cancelled")
        return job

    # -- HTTP ---------------------------------------------------------------------------------------

    @app.post("/v1/jobs", status_code=202, response_model=SubmitResponse, tags=["jobs"])
    async def http_submit(self, req: SubmitRequest, idempotency_key: IdempotencyKey = None) -> Any:
        job, created = await self._submit(req.app_id, req.params, req.priority, idempotency_key)
        payload = {"job_id": str(job.id), "status": job.status.value}
        return payload if created else JSONResponse(status_code=200, content=payload)

    @app.post("/v1/jobs/multipart", status_code=202, response_model=SubmitResponse, tags=["jobs"])
    async def http_submit_multipart(self, request: Request, idempotency_key: IdempotencyKey = None) -> Any:
        """Submit with files: form fields app_id, params (a JSON object), priority, and one file
        field per `file` parameter of the app (stored as artifacts first)."""
        form = await request.form()
        app_id = form.get("app_id")
        if not isinstance(app_id, str) or not app_id:
            raise ApiError(422, "invalid_request", "form field app_id is required", field="app_id")
        try:
            params = json.loads(form.get("params") or "{}")
            priority = int(form.get("priority") or 0)
        except (ValueError, TypeError) as e:
            raise ApiError(422, "invalid_request", f"params must be a JSON object and priority an integer: {e}", field="params") from None
        if not isinstance(params, dict):
            raise ApiError(422, "invalid_request", "params must be a JSON object", field="params")
        spec = self.apps.get(app_id)
        files = {k: v for k, v in form.multi_items() if hasattr(v, "filename") and hasattr(v, "read")}
        if spec is not None:
            file_params = {p.name for p in spec.parameters if p.type == "file"}
            for name in files:
                if name not in file_params:
                    raise ApiError(422, "invalid_params", f"not a file parameter of app {app_id!r} (file parameters: {sorted(file_params)})",
                                   field=f"params.{name}")
            if files and self.artifacts is None:
                raise ApiError(503, "no_artifact_store", "this router has no artifact store configured")
            for name, upload in files.items():
                # Check the format before storing anything, so a rejected request leaves nothing behind.
                try:
                    check_file_format(spec.param(name), upload.filename or "file")
                except ParamError as e:
                    raise ParamsInvalid([ParamError(f"params.{name}", e.message)]) from None
            for name, upload in files.items():
                params[name] = await asyncio.to_thread(self.artifacts.put, await upload.read(), name=upload.filename or name,
                                                       prefix="uploads")
        job, created = await self._submit(app_id, params, priority, idempotency_key)
        payload = {"job_id": str(job.id), "status": job.status.value}
        return payload if created else JSONResponse(status_code=200, content=payload)

    @app.post("/v1/artifacts", status_code=201, tags=["artifacts"])
    async def http_upload(self, file: UploadFile = File(...)) -> dict[str, Any]:
        """Store a file (audio, image) for use as a `file` parameter; returns its artifact URI."""
        if self.artifacts is None:
            raise ApiError(503, "no_artifact_store", "this router has no artifact store configured")
        data = await file.read()
        uri = await asyncio.to_thread(self.artifacts.put, data, name=file.filename or "file", prefix="uploads")
        return {"artifact": uri, "url": http_path(uri), "size": len(data), "content_type": file.content_type}

    @app.get("/v1/artifacts/{key:path}", tags=["artifacts"])
    async def http_artifact(self, key: str) -> Response:
        if self.artifacts is None:
            raise ApiError(404, "not_found", "no artifact store configured")
        uri = "artifact://" + key
        try:
            data = await asyncio.to_thread(self.artifacts.read, uri)
        except ArtifactError as e:
            raise ApiError(404, "artifact_not_found", str(e), field="key") from None
        return Response(content=data, media_type=self.artifacts.content_type(uri))

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
        """Server-Sent Events: progress and status; resume with the Last-Event-ID header."""
        await self._get(job_id)  # 404 before the stream starts
        after = last_event_id or "0-0"
        if not _valid_stream_id(after):
            raise ApiError(422, "invalid_request", "Last-Event-ID is not an event id from this stream", field="Last-Event-ID")
        return StreamingResponse(self._sse(job_id, after), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _sse(self, job_id: uuid.UUID, after: str):
        last = after
        async for ev in self.bus.tail(job_id, after, block_ms=2_000):
            if ev is not None:
                last = ev.id
                yield ev.to_sse()
                if ev.terminal:
                    return
                continue
            # Idle: the terminal event may have been lost with Redis; Postgres has the truth.
            job = await self._get(job_id)
            if job.status.terminal:
                data = {"status": job.status.value, "result": job.result, "error": job.error, "source": "database"}
                yield Event(id=last, type="status", data=data).to_sse()
                return
            yield ": keep-alive\n\n"

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
        checks: dict[str, str] = {}
        try:
            await asyncio.to_thread(self._db_ping)
            checks["database"] = "ok"
        except Exception as e:
            checks["database"] = f"error: {e}"
        try:
            await self.bus.ping()
            checks["redis"] = "ok"
        except Exception as e:
            checks["redis"] = f"error: {e}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(status_code=200 if ok else 503, content={"status": "ok" if ok else "degraded", **checks})

    def _db_ping(self) -> None:
        import sqlalchemy as sa

        with self.store.engine.connect() as c:
            c.execute(sa.text("SELECT 1"))

    # OpenAI-compatible API for chat apps (`task: chat`): any OpenAI client works against /v1.
    @app.get("/v1/models", tags=["openai"])
    async def openai_models(self) -> dict[str, Any]:
        return oai.models_list([a.id for a in self.cfg.apps if a.task == "chat"])

    @app.post("/v1/chat/completions", tags=["openai"])
    async def openai_chat(self, req: oai.ChatRequest) -> Any:
        spec = self.apps.get(req.model)
        if spec is None or spec.task != "chat":
            chat = [a.id for a in self.cfg.apps if a.task == "chat"]
            raise ApiError(404, "model_not_found", f"{req.model!r} is not a chat app (chat apps: {chat})", field="model")
        job, _ = await self._submit(req.model, req.job_params())
        created = int(time.time())
        if req.stream:
            return StreamingResponse(self._chat_stream(job.id, req.model, created), media_type="text/event-stream")
        done = await self.wait(job.id, timeout_s=spec.timeout_s + 30)
        if done["status"] != "succeeded":
            raise ApiError(502, "generation_failed", f"job {job.id} {done['status']}: {done['error']}")
        return oai.completion(str(job.id), req.model, done["result"], created)

    async def _chat_stream(self, job_id: uuid.UUID, model: str, created: int):
        yield oai.chunk(str(job_id), model, created, {"role": "assistant", "content": ""})
        async for ev in self.bus.tail(job_id, "0-0", block_ms=2_000):
            if ev is None:
                job = await self._get(job_id)
                if not job.status.terminal:
                    continue
                ev = Event(id="0", type="status", data={"status": job.status.value, "result": job.result, "error": job.error})
            if ev.type == "progress" and "token" in ev.data:
                yield oai.chunk(str(job_id), model, created, {"content": ev.data["token"]})
            elif ev.terminal:
                if ev.data["status"] == "succeeded":
                    finish = (ev.data.get("result") or {}).get("finish_reason", "stop")
                    yield oai.chunk(str(job_id), model, created, {}, finish)
                else:
                    err = {"error": {"message": f"job {job_id} {ev.data['status']}: {ev.data.get('error')}", "type": "generation_failed"}}
                    yield f"data: {json.dumps(err)}\n\n"
                yield "data: [DONE]\n\n"
                return

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
        beats = await worker_beats.read_all(self.bus.r)
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
        """Block until the job is terminal (or timeout_s passes) and return it."""
        jid = _uuid(job_id)
        deadline = time.monotonic() + timeout_s
        job = await self._get(jid)
        async for ev in self.bus.tail(jid, "0-0", block_ms=500):
            if (ev is not None and ev.terminal) or ev is None or time.monotonic() > deadline:
                job = await self._get(jid)
                if job.status.terminal or time.monotonic() > deadline:
                    break
        return job.to_api()

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


def _valid_stream_id(s: str) -> bool:
    a, _, b = s.partition("-")
    return a.isdigit() and (b == "" or b.isdigit())


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
        from .arbiter_loop import _serve_states

        return _serve_states(_app_name())
    except Exception as e:
        log.debug("serve.status() failed: %s", e)
        return {}
