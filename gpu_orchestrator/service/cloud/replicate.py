"""Replicate through its official client (replicate==1.0.7; 2.x is another SDK).

The client retries 429/5xx itself for GETs, never for POSTs (create, cancel): those surface here
as Transient and CloudBackend retries them. The token comes from the environment or a file, is
given to the client only, and never appears in what we log, store or answer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from gpu_orchestrator.core.cloud import Resolved
from gpu_orchestrator.core.config import ReplicateSpec
from gpu_orchestrator.core.model_errors import ProviderFailed
from gpu_orchestrator.service.cloud.backend import Poll, Transient, check_http

_STATES = {"starting": "running", "processing": "running", "succeeded": "succeeded", "failed": "failed",
           "canceled": "canceled", "aborted": "canceled"}


def read_token(env: str, file: str | None) -> str | None:
    if file:
        try:
            return Path(file).expanduser().read_text().strip() or None
        except OSError:
            return None
    return os.environ.get(env) or None


class ReplicateProvider:
    name = "replicate"

    def __init__(self, spec: ReplicateSpec, token: str | None = None):
        self.spec = spec
        self._token = token if token is not None else read_token(spec.token_env, spec.token_file)
        self._client: Any = None

    def unavailable(self) -> str | None:
        if self._token:
            return None
        where = f"file {self.spec.token_file}" if self.spec.token_file else f"${self.spec.token_env}"
        return f"no Replicate API token ({where} is not set)"

    def __repr__(self) -> str:  # never the token
        return f"ReplicateProvider(base_url={self.spec.base_url!r}, token={'set' if self._token else 'missing'})"

    @property
    def client(self) -> Any:
        if self._client is None:
            import replicate

            self._client = replicate.Client(api_token=self._token, base_url=self.spec.base_url,
                                            timeout=httpx.Timeout(30.0, connect=5.0))
        return self._client

    async def _do(self, coro: Any) -> Any:
        from replicate.exceptions import ReplicateError

        try:
            return await coro
        except ReplicateError as e:
            status = e.status or 0
            what = f"HTTP {status}: {e.detail or e.title or 'error'}"
            if status == 429 or status >= 500:
                raise Transient(what, retry_after_s=None) from None
            raise ProviderFailed(f"replicate refused the request ({what})") from None
        except (httpx.TimeoutException, httpx.TransportError) as e:
            raise Transient(f"{type(e).__name__}: {e}") from None

    async def create(self, r: Resolved, inputs: dict[str, Any], files: dict[str, Any]) -> str:
        t = r.target
        preds = self.client.predictions
        if t.model:
            p = await self._do(preds.async_create(model=t.model, input=inputs))
        elif t.deployment:
            p = await self._do(preds.async_create(deployment=t.deployment, input=inputs))
        else:
            p = await self._do(preds.async_create(version=t.version, input=inputs))
        return p.id

    async def poll(self, r: Resolved, run_id: str) -> Poll:
        p = await self._do(self.client.predictions.async_get(run_id))
        state = _STATES.get(p.status, "running")
        return Poll(state=state, output=p.output, error=p.error and str(p.error), metrics=dict(p.metrics or {}),
                    progress=p.status)

    async def cancel(self, r: Resolved, run_id: str) -> None:
        await self._do(self.client.predictions.async_cancel(run_id))

    async def fetch(self, url: str) -> tuple[bytes, str]:
        """An output file (Replicate serves them from its delivery host, no token needed)."""
        if url.startswith("data:"):
            import base64

            head, _, body = url.partition(",")
            return base64.b64decode(body), head[5:].split(";")[0]
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0), follow_redirects=True) as c:
                resp = await c.get(url)
        except (httpx.TimeoutException, httpx.TransportError) as e:
            raise Transient(f"download {type(e).__name__}") from None
        check_http(resp.status_code, "replicate output file")
        return resp.content, resp.headers.get("content-type", "application/octet-stream")
