"""Domain errors mapped to HTTP answers in one place (`install`), checks of HTTP-level inputs
(headers), and the request body limit. Every 4xx body names the problem and, where one exists, the
offending field: {"error": code, "message": text, "fields": [{"field", "message"}]}. Outages
(Postgres or Redis unreachable) answer 503 with Retry-After, never 500. `ApiError` is for answers
the API itself decides (a header, a stream limit, the OpenAI route's shapes), never raised below it."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpu_orchestrator.core.jobs import (IdempotencyConflict, InvalidRequest, JobNotFound, QueueFull, TransitionError,
                                        idempotency_key_problem)
from gpu_orchestrator.core.apps import ParamsInvalid
from gpu_orchestrator.core.keys import AuthError, Forbidden, QuotaExceeded
from gpu_orchestrator.service.auth import NoKeyStore
from gpu_orchestrator.service.outages import WATCHED, outage, reason
from gpu_orchestrator.service.jobs import ClientGone
from gpu_orchestrator.service.uploads import NoArtifactStore

log = logging.getLogger("gpu_orchestrator.router")
# Retry-After for an outage: a restarting Postgres takes seconds; Redis comes back faster.
RETRY_AFTER_S = {"database": 5, "redis": 2}


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.error, self.message, self.field, self.headers = status, error, message, field, headers


def body(error: str, message: str, fields: list[dict[str, str]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"error": error, "message": message}
    if fields:
        out["fields"] = fields
    return out


_STREAM_ID_RE = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
UINT64_MAX = 2**64 - 1


def check_idempotency_key(key: str | None) -> str | None:
    """1-255 printable ASCII characters (a UUID is typical), else 422 naming the header."""
    if key is None:
        return None
    why = idempotency_key_problem(key)
    if why:
        raise ApiError(422, "invalid_request", why, field="Idempotency-Key")
    return key


MAX_PREFER_WAIT_S = 60


def check_prefer_wait(value: str | None) -> int | None:
    """The seconds a submit may hold its answer for the job to end: `Prefer: wait=N` (RFC 7240, as
    Replicate's API takes it; `wait` alone is the maximum, and so is more than the maximum: RFC 7240
    lets a server cap, and Replicate does), or None. Other preferences are ignored, as the RFC says;
    a wait that is not a whole number of seconds from 1 is a 422 naming the header."""
    for pref in (value or "").split(","):
        name, _, v = pref.split(";")[0].strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        v = v.strip().strip('"')
        if not v:
            return MAX_PREFER_WAIT_S
        if not (v.isascii() and v.isdigit()) or int(v) < 1:
            raise ApiError(422, "invalid_request", f"wait must be whole seconds, at least 1 (more than "
                           f"{MAX_PREFER_WAIT_S} waits {MAX_PREFER_WAIT_S}; got {v[:20]!r})", field="Prefer")
        return min(int(v), MAX_PREFER_WAIT_S)
    return None


def check_last_event_id(value: str | None) -> str:
    """A Redis stream id as this stream sends them (ms[-seq], each an unsigned 64-bit integer in ASCII
    digits); "0-0" (from the start) when absent. Anything else: 422 naming the header."""
    if value is None or value == "":
        return "0-0"
    m = _STREAM_ID_RE.fullmatch(value)
    if m is None or any(int(g) > UINT64_MAX for g in m.groups() if g is not None):
        raise ApiError(422, "invalid_request", "is not an event id from this stream (expected digits, or digits-digits, "
                       "as sent in the `id:` lines)", field="Last-Event-ID")
    return value


def unavailable(what: str, exc: BaseException) -> JSONResponse:
    log.warning("%s unavailable: %s (%s)", what, reason(exc), type(exc).__name__)
    return JSONResponse(status_code=503, content=body("service_unavailable", f"{what} unavailable, retry"),
                        headers={"Retry-After": str(RETRY_AFTER_S[what])})


def _loc(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p != "body"] or ["body"]
    if parts[0] == "path" or parts[0] == "query":
        parts = parts[1:]
    return ".".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":
                return JSONResponse(
                    status_code=400,
                    content=body("malformed_json", f"request body is not valid JSON: {e.get('ctx', {}).get('error', e['msg'])}"),
                )
            fields.append({"field": _loc(e["loc"]), "message": e["msg"]})
        msg = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return JSONResponse(status_code=422, content=body("invalid_request", msg, fields))

    @app.exception_handler(ParamsInvalid)
    async def _params(_: Request, exc: ParamsInvalid) -> JSONResponse:
        fields = [{"field": e.field, "message": e.message} for e in exc.errors]
        return JSONResponse(status_code=422, content=body("invalid_params", str(exc), fields))

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        fields = [{"field": exc.field, "message": exc.message}] if exc.field else None
        msg = f"{exc.field}: {exc.message}" if exc.field else exc.message
        return JSONResponse(status_code=exc.status, content=body(exc.error, msg, fields), headers=exc.headers)

    @app.exception_handler(InvalidRequest)
    async def _invalid(_: Request, exc: InvalidRequest) -> JSONResponse:
        fields = [{"field": exc.field, "message": exc.message}]
        return JSONResponse(status_code=422, content=body(exc.code, f"{exc.field}: {exc.message}", fields))

    @app.exception_handler(JobNotFound)
    async def _nf(_: Request, exc: JobNotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content=body("job_not_found", str(exc), [{"field": "job_id", "message": "no such job"}]))

    @app.exception_handler(TransitionError)
    async def _conflict(_: Request, exc: TransitionError) -> JSONResponse:
        return JSONResponse(status_code=409, content=body("invalid_state", str(exc)))

    @app.exception_handler(IdempotencyConflict)
    async def _idem(_: Request, exc: IdempotencyConflict) -> JSONResponse:
        return JSONResponse(status_code=409, content=body("idempotency_conflict", str(exc),
                                                          [{"field": "Idempotency-Key", "message": str(exc)}]))

    async def _outage(_: Request, exc: Exception) -> JSONResponse:
        # Postgres or Redis unreachable, restarting or overloaded (what the store retries a write
        # for): 503 with Retry-After. A database error that is not an outage is a bug: 500.
        what = outage(exc)
        if what is not None:
            return unavailable(what, exc)
        log.error("database error", exc_info=exc)
        return JSONResponse(status_code=500, content=body("internal_error", "database error; see the router log"))

    for kind in WATCHED:
        app.add_exception_handler(kind, _outage)

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # the client went away while it waited: nobody reads this

    @app.exception_handler(NoArtifactStore)
    async def _no_artifacts(_: Request, exc: NoArtifactStore) -> JSONResponse:
        return JSONResponse(status_code=503, content=body("no_artifact_store", str(exc)))

    @app.exception_handler(NoKeyStore)
    async def _no_keys(_: Request, exc: NoKeyStore) -> JSONResponse:
        return JSONResponse(status_code=503, content=body("no_key_store", str(exc)))

    @app.exception_handler(QueueFull)
    async def _full(_: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(
            status_code=429, content=body("queue_full", str(exc)), headers={"Retry-After": str(exc.retry_after_s)}
        )

    @app.exception_handler(AuthError)
    async def _unauthenticated(_: Request, exc: AuthError) -> JSONResponse:
        return JSONResponse(status_code=401, content=body("unauthorized", exc.message,
                                                          [{"field": "Authorization", "message": exc.message}]),
                            headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        fields = [{"field": exc.field, "message": exc.message}] if exc.field else None
        return JSONResponse(status_code=403, content=body("forbidden", exc.message, fields))

    @app.exception_handler(QuotaExceeded)
    async def _quota(_: Request, exc: QuotaExceeded) -> JSONResponse:
        return JSONResponse(status_code=429, content=body("quota_exceeded", exc.message),
                            headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content=body("http_error", str(exc.detail)), headers=exc.headers)


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, by Content-Length or by counting chunks.

    Counting happens inside `receive`, which the app calls from its body parsing; FastAPI turns any
    error there into a 400, so once the limit is crossed the app's own answer is dropped and the
    413 is sent instead."""

    def __init__(self, app: Any, limit: Any, upload_limit: Any = None, upload_paths: tuple[str, ...] = ()):
        self.app = app
        self._limit = limit  # int, or a callable so the router can set it from its config
        self._upload_limit = upload_limit
        self.upload_paths = upload_paths

    def limit_for(self, path: str) -> int:
        lim = self._limit
        if self._upload_limit is not None and any(path.endswith(p) for p in self.upload_paths):
            lim = self._upload_limit
        return lim() if callable(lim) else lim

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope.get("path", ""))
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > limit:
                return await self._reject(send, limit)
        seen, over, started = 0, False, False

        async def counted() -> dict:
            nonlocal seen, over
            if over:
                raise _TooLarge()
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > limit:
                over = True
                raise _TooLarge()
            return msg

        async def guarded_send(msg: dict) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to the error we raised in its receive (a 400): replaced below
            started = True
            await send(msg)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._reject(send, limit)

    async def _reject(self, send: Any, limit: int) -> None:
        import json

        payload = json.dumps(body("body_too_large", f"request body exceeds the limit of {limit} bytes")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class _TooLarge(Exception):
    pass
