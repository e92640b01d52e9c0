"""Modal, two ways: a deployed class or function by name (the SDK: spawn, poll, re-attach by call
id, cancel), or a web endpoint URL with Modal's proxy-auth headers (Modal-Key, Modal-Secret).
deploy/modal/modal_app.py deploys our own model classes, so the fallback runs our model code.

Modal's client retries for ever while its server is unreachable: CloudBackend puts our deadline
on every call. The SDK sits behind `ModalSdk` (a seam: Modal has no offline server, so tests put
a fake there); the endpoint mode is plain HTTP.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any, Protocol

import httpx

from gpu_orchestrator.core.cloud import Resolved
from gpu_orchestrator.core.config import ModalSpec
from gpu_orchestrator.core.model_errors import ProviderFailed, ProviderUnavailable
from gpu_orchestrator.service.cloud.backend import Poll, Transient, check_http

ENDPOINT_PREFIX = "endpoint:"  # run ids of endpoint calls: they live in this process only


class ModalSdk(Protocol):
    async def spawn(self, r: Resolved, params: dict[str, Any], files: dict[str, Any]) -> str: ...
    async def poll(self, call_id: str) -> tuple[bool, Any]: ...  # (done, result); raises what the call raised
    async def cancel(self, call_id: str) -> None: ...


class RealModalSdk:
    """The `modal` package (imported on first use: the router does not need it otherwise)."""

    def __init__(self, token_id: str, token_secret: str):
        self._creds = (token_id, token_secret)
        self._client: Any = None

    async def _c(self) -> Any:
        if self._client is None:
            import modal

            self._client = await modal.Client.from_credentials.aio(*self._creds)
        return self._client

    async def spawn(self, r: Resolved, params: dict[str, Any], files: dict[str, Any]) -> str:
        import modal

        t, client = r.target, await self._c()
        if t.function:
            fn = modal.Function.from_name(t.app, t.function, client=client)
        else:
            obj = modal.Cls.from_name(t.app, t.cls, client=client)()
            fn = getattr(obj, t.method)
        call = await fn.spawn.aio(params, files)
        return call.object_id

    async def poll(self, call_id: str) -> tuple[bool, Any]:
        import modal

        call = modal.FunctionCall.from_id(call_id, client=await self._c())
        try:
            return True, await call.get.aio(timeout=0)
        except TimeoutError:  # Modal's "no output yet" (our own deadline is outside this call)
            return False, None

    async def cancel(self, call_id: str) -> None:
        import modal

        await modal.FunctionCall.from_id(call_id, client=await self._c()).cancel.aio()


def _env(name: str, file_values: dict[str, str]) -> str | None:
    return file_values.get(name) or os.environ.get(name) or None


class ModalProvider:
    name = "modal"

    def __init__(self, spec: ModalSpec, *, sdk: ModalSdk | None = None, modes: set[str] | None = None):
        self.spec = spec
        values: dict[str, str] = {}
        if spec.token_file:  # a mounted secret: YAML/JSON of the env names to values
            import yaml

            try:
                with open(os.path.expanduser(spec.token_file)) as f:
                    values = {str(k): str(v) for k, v in (yaml.safe_load(f) or {}).items()}
            except (OSError, yaml.YAMLError, AttributeError):
                values = {}
        self._sdk_creds = (_env(spec.token_id_env, values), _env(spec.token_secret_env, values))
        self._proxy = (_env(spec.proxy_key_env, values), _env(spec.proxy_secret_env, values))
        self.modes = modes if modes is not None else {"sdk", "endpoint"}
        self.sdk = sdk
        if sdk is None and all(self._sdk_creds):
            self.sdk = RealModalSdk(*self._sdk_creds)  # type: ignore[arg-type]
        self._calls: dict[str, asyncio.Task] = {}  # endpoint calls in flight

    def __repr__(self) -> str:
        return f"ModalProvider(sdk={'set' if self.sdk else 'missing'}, proxy={'set' if all(self._proxy) else 'missing'})"

    def unavailable(self) -> str | None:
        missing = []
        if "sdk" in self.modes and self.sdk is None:
            missing.append(f"${self.spec.token_id_env} and ${self.spec.token_secret_env}")
        if "endpoint" in self.modes and not all(self._proxy):
            missing.append(f"${self.spec.proxy_key_env} and ${self.spec.proxy_secret_env}")
        return f"no Modal credentials ({'; '.join(missing)} not set)" if missing else None

    def portable(self, run_id: str) -> bool:
        """Whether another router can re-attach to the run (an endpoint call lives in this process)."""
        return not run_id.startswith(ENDPOINT_PREFIX)

    def can_reattach(self, run_id: str) -> bool:
        return self.portable(run_id) or run_id in self._calls

    async def create(self, r: Resolved, inputs: dict[str, Any], files: dict[str, Any]) -> str:
        if r.target.endpoint:
            run_id = ENDPOINT_PREFIX + uuid.uuid4().hex
            self._calls[run_id] = asyncio.ensure_future(self._post(r, inputs, files))
            return run_id
        if self.sdk is None:
            raise ProviderFailed(self.unavailable() or "no Modal client")
        try:
            return await self.sdk.spawn(r, inputs, files)
        except Exception as e:
            raise _translate(e) from None

    async def poll(self, r: Resolved, run_id: str) -> Poll:
        if run_id.startswith(ENDPOINT_PREFIX):
            task = self._calls.get(run_id)
            if task is None:
                return Poll("failed", error="the endpoint call was lost with the router that made it")
            if not task.done():
                return Poll("running", progress="running")
            self._calls.pop(run_id, None)
            if task.cancelled():
                return Poll("canceled")
            exc = task.exception()
            if isinstance(exc, Transient):  # the request is over: a new attempt posts again
                raise ProviderUnavailable(f"modal {exc}")
            if exc is not None:
                return Poll("failed", error=str(exc))
            return Poll("succeeded", output=task.result())
        assert self.sdk is not None
        try:
            done, value = await self.sdk.poll(run_id)
        except Exception as e:
            err = _translate(e)
            if isinstance(err, Transient):
                raise err from None
            return Poll("failed", error=str(err))
        return Poll("succeeded", output=value) if done else Poll("running", progress="running")

    async def cancel(self, r: Resolved, run_id: str) -> None:
        if run_id.startswith(ENDPOINT_PREFIX):
            task = self._calls.pop(run_id, None)
            if task is not None:
                task.cancel()  # closes the request; Modal stops an input whose client left
            return
        if self.sdk is not None:
            await self.sdk.cancel(run_id)

    async def fetch(self, url: str) -> tuple[bytes, str]:
        raise ProviderFailed("Modal results carry their files inline")

    async def _post(self, r: Resolved, inputs: dict[str, Any], files: dict[str, Any]) -> Any:
        key, secret = self._proxy
        headers = {"Modal-Key": key or "", "Modal-Secret": secret or ""}
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0)) as c:
                resp = await c.post(r.target.endpoint, json={"params": inputs, "files": files}, headers=headers)
        except (httpx.TimeoutException, httpx.TransportError) as e:
            raise Transient(f"endpoint {type(e).__name__}") from None
        check_http(resp.status_code, "endpoint", resp.text[:300])
        return resp.json()


def _translate(e: BaseException) -> BaseException:
    """Modal's connection and service errors may pass (Transient); the rest is the run's failure."""
    name = type(e).__name__
    if name in ("ConnectionError", "ServiceError", "InternalError", "ResourceExhaustedError") or isinstance(e, OSError):
        return Transient(f"{name}: {e}")
    if isinstance(e, (Transient, ProviderFailed)):
        return e
    return ProviderFailed(f"{name}: {e}")
