"""Loopback fakes of the cloud services the orchestrator calls, for contract tests that drive them
through the official clients (replicate==1.0.7, plain httpx for Modal web endpoints).

FakeReplicate speaks Replicate's HTTP predictions API (paths and JSON as replicate/prediction.py,
model.py and deployment.py send and parse them); FakeModalEndpoint is a web endpoint behind Modal's
proxy auth. Both are real HTTP servers on 127.0.0.1 (a free port), served by uvicorn in a thread,
so the clients' own transports, retries and error mapping are what gets exercised.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

TERMINAL = {"succeeded", "failed", "canceled"}


def png_of_size(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(buf, format="PNG")
    return buf.getvalue()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class _LoopbackServer:
    """An ASGI app served by uvicorn on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, handler: Callable[[Request], Any]):
        self._app = Starlette(routes=[Route("/{path:path}", handler,
                                            methods=["GET", "POST", "PUT", "DELETE", "PATCH"])])
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    def start(self) -> str:
        if self._server is not None:
            return self.base_url
        # Bind here (port 0) and hand uvicorn the socket: no race for the port, and it is known now.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(self._app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1)
        server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name=f"fake-{type(self).__name__}-{port}")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the loopback server did not start")
            time.sleep(0.005)
        self._server, self.base_url = server, f"http://127.0.0.1:{port}"
        return self.base_url

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


async def _record(req: Request, into: list[dict], lock: Any) -> bytes:
    body = await req.body()  # read before locking: awaiting under a thread lock could block the loop
    with lock:
        into.append({"method": req.method, "path": req.url.path,
                     "headers": {k.lower(): v for k, v in req.headers.items()},
                     "body": body.decode("utf-8", "replace")})
    return body


# ---------------------------------------------------------------------------------------- Replicate


@dataclass
class Behaviour:
    """How the predictions created for one key behave."""

    polls: int = 1  # GETs answered "processing" before the one that answers the final state
    output: Any = "ok"  # or a callable (input, fake) -> output, called once when the prediction ends
    error: str | None = None  # set: the prediction ends "failed" with this error
    predict_time: float = 1.5
    metrics: dict | None = None  # merged into metrics on success (e.g. input_token_count)
    create_status: list[int] = field(default_factory=list)  # answered to the next create POSTs, consumed
    get_status: list[int] = field(default_factory=list)  # answered to the next GETs of its predictions
    hang: bool = False  # stays "processing" until cancelled


def _problem(status: int, title: str, detail: str, headers: dict | None = None) -> JSONResponse:
    # RFC 7807 problem details, what ReplicateError.from_response reads.
    return JSONResponse({"title": title, "detail": detail, "status": status}, status_code=status,
                        headers=headers, media_type="application/problem+json")


_TITLES = {400: "Bad request", 401: "Unauthenticated", 402: "Payment required", 404: "Not found",
           422: "Input validation failed", 429: "Too many requests", 500: "Internal server error",
           502: "Bad gateway", 503: "Service unavailable", 504: "Gateway timeout"}


def _status_problem(status: int) -> JSONResponse:
    # Retry-After: 0 on 429 so the client's own retries (GETs) do not sleep.
    return _problem(status, _TITLES.get(status, "Error"), f"fake: injected HTTP {status}",
                    headers={"Retry-After": "0"} if status == 429 else None)


_MODEL = re.compile(r"^/v1/models/([^/]+)/([^/]+)/predictions$")
_DEPLOYMENT = re.compile(r"^/v1/deployments/([^/]+)/([^/]+)/predictions$")
_PREDICTION = re.compile(r"^/v1/predictions/([^/]+)$")
_CANCEL = re.compile(r"^/v1/predictions/([^/]+)/cancel$")
_FILE = re.compile(r"^/files/(.+)$")


class FakeReplicate(_LoopbackServer):
    def __init__(self, token: str = "r8_fake_test_token"):
        super().__init__(self._handle)
        self.token = token
        self._lock = threading.RLock()  # RLock: an output callable may call put_file
        self.behaviours: dict[str, Behaviour] = {}
        self.creates: list[dict] = []
        self.cancels: list[str] = []
        self.requests: list[dict] = []
        self.predictions: dict[str, dict] = {}
        self._files: dict[str, tuple[bytes, str]] = {}
        self._state: dict[str, dict] = {}  # id -> {"key", "polls"} (what the JSON does not show)

    def file_url(self, name: str) -> str:
        return f"{self.base_url}/files/{name}"

    def put_file(self, name: str, data: bytes, content_type: str) -> str:
        with self._lock:
            self._files[name] = (data, content_type)
        return self.file_url(name)

    def reset(self) -> None:
        with self._lock:
            for coll in (self.behaviours, self.creates, self.cancels, self.requests, self.predictions,
                         self._files, self._state):
                coll.clear()

    def behaviour(self, key: str) -> Behaviour:
        with self._lock:
            return self.behaviours.get(key) or Behaviour()

    async def _handle(self, req: Request) -> Response:
        raw = await _record(req, self.requests, self._lock)
        path = req.url.path
        if m := _FILE.match(path):  # the delivery host: no token, like replicate.delivery
            with self._lock:
                found = self._files.get(m.group(1))
            if found is None:
                return PlainTextResponse("not found", status_code=404)
            return Response(found[0], media_type=found[1])
        if not path.startswith("/v1/"):
            return _problem(404, "Not found", "Not found.")
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "token") or token != self.token:
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        with self._lock:
            return self._route(req.method, path, raw)

    def _route(self, method: str, path: str, raw: bytes) -> Response:
        if method == "POST":
            if m := _MODEL.match(path):
                return self._create(f"{m.group(1)}/{m.group(2)}", path, raw, model=f"{m.group(1)}/{m.group(2)}")
            if m := _DEPLOYMENT.match(path):
                return self._create(f"deployments/{m.group(1)}/{m.group(2)}", path, raw,
                                    model=f"{m.group(1)}/{m.group(2)}")
            if path == "/v1/predictions":
                return self._create(None, path, raw, model=None)
            if m := _CANCEL.match(path):
                return self._cancel(m.group(1))
        if method == "GET" and (m := _PREDICTION.match(path)):
            return self._get(m.group(1))
        return _problem(404, "Not found", "Not found.")

    def _create(self, key: str | None, path: str, raw: bytes, model: str | None) -> Response:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _problem(400, "Bad request", "The request body is not a JSON object.")
        if key is None:  # /v1/predictions: the version names it
            key = body.get("version")
            if not isinstance(key, str) or not key:
                return _problem(422, "Input validation failed", "version is required")
        b = self.behaviour(key)
        if b.create_status:
            return _status_problem(b.create_status.pop(0))
        if not isinstance(body.get("input"), dict):
            return _problem(422, "Input validation failed", "input is required and must be an object")
        pid = base64.b32encode(os.urandom(16)).decode().lower().rstrip("=")  # 26 chars, like Replicate's
        version = body.get("version") or hashlib.sha256(key.encode()).hexdigest()
        urls = {"get": f"{self.base_url}/v1/predictions/{pid}",
                "cancel": f"{self.base_url}/v1/predictions/{pid}/cancel"}
        self.predictions[pid] = {
            "id": pid, "model": model or "fake/version", "version": version, "status": "starting",
            "input": body["input"], "output": None, "error": None, "logs": "", "metrics": {},
            "created_at": _now(), "started_at": None, "completed_at": None, "urls": urls,
            "source": "api", "data_removed": False}
        self._state[pid] = {"key": key, "polls": b.polls}
        self.creates.append({"id": pid, "key": key, "input": body["input"], "path": path})
        return JSONResponse(self.predictions[pid], status_code=201)

    def _get(self, pid: str) -> Response:
        p, st = self.predictions.get(pid), self._state.get(pid)
        if p is None or st is None:
            return _problem(404, "Not found", "Not found.")
        b = self.behaviour(st["key"])
        if b.get_status:
            return _status_problem(b.get_status.pop(0))
        if p["status"] not in TERMINAL:
            self._advance(p, st, b)
        return JSONResponse(p)

    def _advance(self, p: dict, st: dict, b: Behaviour) -> None:
        p["started_at"] = p["started_at"] or _now()
        if b.hang or st["polls"] > 0:
            st["polls"] -= 1
            p["status"], p["logs"] = "processing", "fake: processing\n"
            return
        p["completed_at"] = _now()
        error = b.error
        if error is None:
            try:
                p["output"] = b.output(p["input"], self) if callable(b.output) else b.output
            except Exception as e:  # a failing output callable is a failed prediction, not a 500
                error = f"{type(e).__name__}: {e}"
        if error is not None:
            p.update(status="failed", error=error, output=None, logs=p["logs"] + f"fake: {error}\n")
        else:
            p.update(status="succeeded", metrics={"predict_time": b.predict_time, **(b.metrics or {})},
                     logs=p["logs"] + "fake: done\n")

    def _cancel(self, pid: str) -> Response:
        p = self.predictions.get(pid)
        if p is None:
            return _problem(404, "Not found", "Not found.")
        self.cancels.append(pid)
        if p["status"] not in TERMINAL:
            p.update(status="canceled", completed_at=_now())
        return JSONResponse(p)


# ------------------------------------------------------------------------------------------- Modal


class FakeModalEndpoint(_LoopbackServer):
    """A web endpoint with requires_proxy_auth=True: Modal's proxy answers 401 (plain text) unless the
    request carries a proxy auth token's Modal-Key and Modal-Secret; the handler never sees those."""

    def __init__(self, key: str = "wk-fake", secret: str = "ws-fake"):
        super().__init__(self._handle)
        self.key, self.secret = key, secret
        self.handler: Callable[[dict], tuple[int, Any]] | None = None
        self.requests: list[dict] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"{self.base_url}/run"

    def start(self) -> str:
        super().start()
        return self.url

    async def _handle(self, req: Request) -> Response:
        raw = await _record(req, self.requests, self._lock)
        key, secret = req.headers.get("modal-key"), req.headers.get("modal-secret")
        if not key or not secret:
            return PlainTextResponse("modal-http: missing credentials for proxy authorization", status_code=401)
        if (key, secret) != (self.key, self.secret):
            return PlainTextResponse("modal-http: invalid credentials for proxy authorization", status_code=401)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return JSONResponse({"detail": "body is not valid JSON"}, status_code=422)
        handler = self.handler or (lambda b: (200, {"output": b}))
        try:
            status, out = handler(body)
        except Exception:  # an exception in the endpoint's code: Modal answers a bare 500
            return PlainTextResponse("Internal Server Error", status_code=500)
        return JSONResponse(out, status_code=status)
