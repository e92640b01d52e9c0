"""Errors on the OpenAI-compatible routes in OpenAI's shape, so the official clients show them.

The job API answers `{"error": code, "message", "fields"}`; the openai SDK reads
`{"error": {"message", "type", "param", "code"}}` (and OpenAI answers 400 where we answer 422).
An ASGI middleware rewrites every error answer on the OpenAI paths (whoever produced it: a route,
an exception handler, the body limit), so the job API's handlers stay the one place errors are
decided. Other paths pass straight through."""

from __future__ import annotations

import json
from typing import Any

# The OpenAI routes (api/openai.py, api/openai_media.py); /v1/jobs, /v1/apps ... keep the job API's shape.
OPENAI_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/embeddings"})
OPENAI_PREFIXES = ("/v1/models/", "/v1/images/", "/v1/audio/")

# OpenAI's error types by status (the SDK maps the status to its exception class; `type` is what
# a user's code may branch on).
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
         429: "rate_limit_error"}


def is_openai_path(path: str) -> bool:
    return path in OPENAI_PATHS or path.startswith(OPENAI_PREFIXES)


def route_path(scope: dict) -> str:
    """The path as the app routes it: without the prefix it is mounted under (Serve's route_prefix)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def openai_error(status: int, content: Any) -> tuple[int, dict[str, Any]]:
    """Our error answer as OpenAI's: 422 becomes 400 (OpenAI's status for a bad parameter), `param`
    is the first field named, `code` our error code. Pure."""
    if isinstance(content, dict) and isinstance(content.get("error"), dict):
        return status, content  # already OpenAI's (a stream's error chunk, a route's own)
    if not isinstance(content, dict):
        content = {"error": "http_error", "message": str(content)}
    fields = content.get("fields") or []
    status = 400 if status == 422 else status
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return status, {"error": {"message": content.get("message") or content.get("error") or "error", "type": kind,
                              "param": fields[0].get("field") if fields else None, "code": content.get("error")}}


class OpenAIErrors:
    """ASGI middleware: on the OpenAI paths, an answer of 400 or more with a JSON body is rewritten
    by `openai_error` (its status too). Error bodies are small: held until complete."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not is_openai_path(route_path(scope)):
            return await self.app(scope, receive, send)
        start: dict | None = None
        chunks: list[bytes] = []

        async def rewrite(msg: dict) -> None:
            nonlocal start
            if msg["type"] == "http.response.start" and msg["status"] >= 400 and _is_json(msg):
                start = msg
                return
            if start is None:
                return await send(msg)
            chunks.append(msg.get("body", b""))
            if msg.get("more_body"):
                return
            try:
                status, content = openai_error(start["status"], json.loads(b"".join(chunks) or b"null"))
                payload = json.dumps(content).encode()
            except ValueError:  # not JSON after all: as it was
                status, payload = start["status"], b"".join(chunks)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "status": status, "headers": headers + [(b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})

        await self.app(scope, receive, rewrite)


def _is_json(start: dict) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"application/json") for k, v in start.get("headers", []))
