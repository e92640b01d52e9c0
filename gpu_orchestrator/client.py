"""Python client for the router's HTTP API, sync (`Client`) and async (`AsyncClient`).

    from gpu_orchestrator import Client
    c = Client("http://127.0.0.1:8000")
    job = c.submit("echo", {"message": "hi"})
    print(c.wait(job["job_id"])["result"])
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import httpx

from gpu_orchestrator.core.jobs import TERMINAL as _TERMINAL

TERMINAL = frozenset(s.value for s in _TERMINAL)  # status strings as the API sends them
DEFAULT_URL = "http://127.0.0.1:8000"
LONG_POLL_S = 60  # a long poll asks for this much at most (the server caps a wait at its maximum)


class ApiError(Exception):
    """A non-2xx answer; `message` is the server's explanation (it names the bad field)."""

    def __init__(self, status: int, body: Any, retry_after: str | None = None):
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.message = body.get("message", str(body)) if isinstance(body, dict) else str(body)
        super().__init__(f"HTTP {status}: {self.message}")


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text.replace("-", "")) == 32


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        try:
            body = r.json()
        except ValueError:
            body = r.text
        raise ApiError(r.status_code, body, r.headers.get("Retry-After"))
    return r.json()


def _artifact_path(url_or_uri: str) -> str:
    return "/v1/artifacts/" + url_or_uri[len("artifact://"):] if url_or_uri.startswith("artifact://") else url_or_uri


def _submit_body(app_id: str, params: dict[str, Any] | None, priority: int) -> dict[str, Any]:
    return {"app_id": app_id, "params": params or {}, "priority": priority}


def _headers(idempotency_key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": idempotency_key} if idempotency_key else {}


class SSEParser:
    """Incremental Server-Sent Events parser: feed lines, get {"id", "event", "data"} dicts."""

    def __init__(self) -> None:
        self.ev: dict[str, Any] = {}

    def feed(self, line: str) -> dict[str, Any] | None:
        if line == "":
            ev, self.ev = self.ev, {}
            return ev if "data" in ev else None
        if not line.startswith(":"):  # ':' starts a keep-alive comment
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "data":
                self.ev["data"] = json.loads(value)
            elif key in ("id", "event"):
                self.ev[key] = value
        return None


def parse_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    p = SSEParser()
    for line in lines:
        ev = p.feed(line)
        if ev is not None:
            yield ev


def auth_headers(api_key: str | None) -> dict[str, str]:
    """`api_key` (default: $GPU_ORCH_API_KEY) as a Bearer token; none when there is no key."""
    key = api_key if api_key is not None else os.environ.get("GPU_ORCH_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


class Client:
    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = 30.0, api_key: str | None = None):
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, headers=auth_headers(api_key))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def submit(self, app_id: str, params: dict[str, Any] | None = None, *, priority: int = 0,
               idempotency_key: str | None = None) -> dict[str, Any]:
        return _check(self.http.post("/v1/jobs", json=_submit_body(app_id, params, priority), headers=_headers(idempotency_key)))

    def get(self, job_id: str) -> dict[str, Any]:
        return _check(self.http.get(f"/v1/jobs/{job_id}"))

    def upload(self, path: str | Path) -> str:
        """Store a local file (audio, image) as an artifact; returns its artifact:// URI for a `file` param."""
        path = Path(path)
        with path.open("rb") as f:
            return _check(self.http.post("/v1/artifacts", files={"file": (path.name, f)}))["artifact"]

    def download(self, url_or_uri: str) -> bytes:
        """An output's bytes, by its `url` (/v1/artifacts/...) or its artifact:// URI."""
        r = self.http.get(_artifact_path(url_or_uri))
        if r.status_code >= 400:
            _check(r)
        return r.content

    def list(self, *, app_id: str | None = None, status: str | None = None, limit: int = 50,
             cursor: str | None = None, id_prefix: str | None = None) -> dict[str, Any]:
        q = {k: v for k, v in {"app_id": app_id, "status": status, "limit": limit, "cursor": cursor,
                               "id_prefix": id_prefix}.items() if v is not None}
        return _check(self.http.get("/v1/jobs", params=q))

    def resolve(self, job_id: str) -> str:
        """The full id of `job_id`, which may be its first hex digits (4 or more) as the CLI shows
        them; ValueError when none or several of the jobs this key sees start with them."""
        if _is_uuid(job_id):
            return job_id
        try:
            found = self.list(id_prefix=job_id, limit=5)["jobs"]
        except ApiError as e:
            if e.status != 422:
                raise
            raise ValueError(e.message.removeprefix("id_prefix: ")) from None
        if len(found) == 1:
            return found[0]["job_id"]
        if not found:
            raise ValueError(f"no job id starts with {job_id!r}")
        raise ValueError(f"{job_id!r} is the start of several job ids ({', '.join(j['job_id'] for j in found)}"
                         f"{', ...' if len(found) == 5 else ''}): give more of it")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return _check(self.http.delete(f"/v1/jobs/{job_id}"))

    def apps(self) -> list[dict[str, Any]]:
        return _check(self.http.get("/v1/apps"))["apps"]

    def workers(self) -> list[dict[str, Any]]:
        return _check(self.http.get("/v1/workers"))["models"]

    def fleet(self) -> dict[str, Any]:
        """All of GET /v1/workers: the models and the arbiter's latest decision."""
        return _check(self.http.get("/v1/workers"))

    def stats(self, *, minutes: int = 60) -> dict[str, Any]:
        return _check(self.http.get("/v1/stats", params={"minutes": minutes}))

    def costs(self, *, since: str | None = None, until: str | None = None, app_id: str | None = None,
              group_by: str = "backend") -> dict[str, Any]:
        """GET /v1/costs: finished jobs' GPU-seconds and dollars, local vs cloud (ISO times)."""
        q = {k: v for k, v in {"since": since, "until": until, "app_id": app_id, "group_by": group_by}.items() if v}
        return _check(self.http.get("/v1/costs", params=q))

    def prune(self, *, older_than_days: float | None = None, dry_run: bool = False) -> dict[str, Any]:
        """POST /v1/admin/prune: delete terminal jobs older than that (default: the stack's
        router.retention_days) with their artifacts and event streams; dry_run counts them."""
        body = {"dry_run": dry_run, **({"older_than_days": older_than_days} if older_than_days is not None else {})}
        return _check(self.http.post("/v1/admin/prune", json=body, timeout=3600))

    def events(self, job_id: str, *, last_event_id: str | None = None, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Progress and status events until the terminal one. The server ends a stream at the terminal
        status, or after its time limit: then this reconnects where it left off (Last-Event-ID).
        A `gap` event says events may have been lost while the server's event bus was down."""
        last = last_event_id
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                  timeout=httpx.Timeout(timeout, connect=10)) as r:
                if r.status_code >= 400:
                    r.read()
                    _check(r)
                for ev in parse_sse(r.iter_lines()):
                    last = ev.get("id", last)
                    yield ev
                    if ev.get("event") == "status" and ev["data"].get("status") in TERMINAL:
                        return
            time.sleep(0.5)  # the SSE default reconnection delay is about this

    def wait(self, job_id: str, *, timeout: float = 600.0) -> dict[str, Any]:
        """The job once terminal: long polls (GET ?wait=, one request a minute at most while it
        runs); rides out dropped connections, and a 503/429 (an outage) as the server's
        Retry-After says. `events` is for progress."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                job = _check(self.http.get(f"/v1/jobs/{job_id}", **_long_poll(left)))
                if job["status"] in TERMINAL:
                    return job
            except (httpx.TransportError, httpx.RemoteProtocolError):
                time.sleep(0.5)
            except ApiError as e:
                if e.status not in (429, 503):
                    raise
                time.sleep(_retry_after(e.retry_after, deadline))
        raise TimeoutError(f"job {job_id} not finished after {timeout}s")


def _long_poll(left: float) -> dict[str, Any]:
    """GET /v1/jobs/{id} arguments for a long poll of at most `left` s (the HTTP timeout outlasts it)."""
    wait = max(1, min(LONG_POLL_S, int(left)))
    return {"params": {"wait": wait}, "timeout": wait + 30}


def _retry_after(header: str | None, deadline: float) -> float:
    try:
        wait = float(header) if header else 1.0
    except ValueError:
        wait = 1.0
    return max(0.1, min(wait, 30.0, deadline - time.monotonic()))


class AsyncClient:
    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = 30.0, api_key: str | None = None):
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout, headers=auth_headers(api_key))

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def submit(self, app_id: str, params: dict[str, Any] | None = None, *, priority: int = 0,
                     idempotency_key: str | None = None) -> dict[str, Any]:
        return _check(await self.http.post("/v1/jobs", json=_submit_body(app_id, params, priority), headers=_headers(idempotency_key)))

    async def get(self, job_id: str) -> dict[str, Any]:
        return _check(await self.http.get(f"/v1/jobs/{job_id}"))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return _check(await self.http.delete(f"/v1/jobs/{job_id}"))

    async def apps(self) -> list[dict[str, Any]]:
        return _check(await self.http.get("/v1/apps"))["apps"]

    async def workers(self) -> list[dict[str, Any]]:
        return _check(await self.http.get("/v1/workers"))["models"]

    async def fleet(self) -> dict[str, Any]:
        return _check(await self.http.get("/v1/workers"))

    async def stats(self, *, minutes: int = 60) -> dict[str, Any]:
        return _check(await self.http.get("/v1/stats", params={"minutes": minutes}))

    async def costs(self, *, since: str | None = None, until: str | None = None, app_id: str | None = None,
                    group_by: str = "backend") -> dict[str, Any]:
        q = {k: v for k, v in {"since": since, "until": until, "app_id": app_id, "group_by": group_by}.items() if v}
        return _check(await self.http.get("/v1/costs", params=q))

    async def list(self, *, app_id: str | None = None, status: str | None = None, limit: int = 50,
                   cursor: str | None = None) -> dict[str, Any]:
        q = {k: v for k, v in {"app_id": app_id, "status": status, "limit": limit, "cursor": cursor}.items() if v is not None}
        return _check(await self.http.get("/v1/jobs", params=q))

    async def upload(self, path: str | Path) -> str:
        path = Path(path)
        data = await asyncio.to_thread(path.read_bytes)
        return _check(await self.http.post("/v1/artifacts", files={"file": (path.name, data)}))["artifact"]

    async def download(self, url_or_uri: str) -> bytes:
        r = await self.http.get(_artifact_path(url_or_uri))
        if r.status_code >= 400:
            _check(r)
        return r.content

    async def events(self, job_id: str, *, last_event_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """As Client.events: until the terminal status, reconnecting after the server's time limit."""
        last = last_event_id
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            async with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                        timeout=httpx.Timeout(None, connect=10)) as r:
                if r.status_code >= 400:
                    await r.aread()
                    _check(r)
                p = SSEParser()
                async for line in r.aiter_lines():
                    ev = p.feed(line)
                    if ev is not None:
                        last = ev.get("id", last)
                        yield ev
                        if ev.get("event") == "status" and ev["data"].get("status") in TERMINAL:
                            return
            await asyncio.sleep(0.5)

    async def wait(self, job_id: str, *, timeout: float = 600.0) -> dict[str, Any]:
        """As Client.wait: long polls until the job is terminal."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                job = _check(await self.http.get(f"/v1/jobs/{job_id}", **_long_poll(left)))
            except (httpx.TransportError, httpx.RemoteProtocolError):
                await asyncio.sleep(0.5)
                continue
            except ApiError as e:  # an outage: wait as the server says
                if e.status not in (429, 503):
                    raise
                await asyncio.sleep(_retry_after(e.retry_after, deadline))
                continue
            if job["status"] in TERMINAL:
                return job
        raise TimeoutError(f"job {job_id} not finished after {timeout}s")

