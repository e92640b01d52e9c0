"""Mapping of domain errors to HTTP answers. Every 4xx body names the problem and, where one
exists, the offending field: {"error": code, "message": text, "fields": [{"field", "message"}]}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpu_orchestrator.jobs import JobNotFound, QueueFull, TransitionError
from gpu_orchestrator.registry import ParamsInvalid


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.error, self.message, self.field, self.headers = status, error, message, field, headers


def body(error: str, message: str, fields: list[dict[str, str]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"error": error, "message": message}
    if fields:
        out["fields"] = fields
    return out


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

    @app.exception_handler(JobNotFound)
    async def _nf(_: Request, exc: JobNotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content=body("job_not_found", str(exc), [{"field": "job_id", "message": "no such job"}]))

    @app.exception_handler(TransitionError)
    async def _conflict(_: Request, exc: TransitionError) -> JSONResponse:
        return JSONResponse(status_code=409, content=body("invalid_state", str(exc)))

    @app.exception_handler(QueueFull)
    async def _full(_: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(
            status_code=429, content=body("queue_full", str(exc)), headers={"Retry-After": str(exc.retry_after_s)}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content=body("http_error", str(exc.detail)), headers=exc.headers)


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, by Content-Length or by counting chunks."""

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
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise _TooLarge()
            return msg

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._reject(send, limit)

    async def _reject(self, send: Any, limit: int) -> None:
        import json

        payload = json.dumps(body("body_too_large", f"request body exceeds the limit of {limit} bytes")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class _TooLarge(Exception):
    pass
