"""Cloud backends: a job's run on Replicate or Modal, behind the same ModelBackend protocol as a
local model (service/backends.py), so the dispatcher runs, times out, cancels and records it the
same way.

One run: create the provider's prediction (or re-attach to the one the job row names), record its
id on the row BEFORE waiting (a router that restarts re-attaches instead of creating a second),
poll until it ends, fetch output files into our artifact store, and return our result shape with
its cost. Every provider call has our own deadline (Modal's client retries for ever while its
server is unreachable); 429, 5xx and timeouts are retried with backoff within the run, then the
attempt fails as ProviderUnavailable (retried by the job's policy). A provider's own failure ends
the job with its message. Cancelling the run cancels the prediction.

Providers (service/cloud/replicate.py, service/cloud/modal.py) implement CloudProvider.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import time
from typing import Any, Awaitable, Callable, Literal, Protocol

from gpu_orchestrator.core.apps import AppSpec
from gpu_orchestrator.core.cloud import Resolved, output_files, resolve, to_inputs, to_result
from gpu_orchestrator.core.costs import CostsSpec, modal_cost, replicate_cost
from gpu_orchestrator.core.jobs import Job
from gpu_orchestrator.core.model_errors import JobTimeout, ProviderFailed, ProviderUnavailable
from gpu_orchestrator.service.backends import StartedRun
from gpu_orchestrator.store.base import Cost

log = logging.getLogger("gpu_orchestrator.cloud")

MAX_OUTPUT_BYTES = 200 * 1_048_576


class Transient(Exception):
    """A provider call that may succeed if tried again (429, 5xx, a timeout, a dropped connection)."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def check_http(status: int, what: str, detail: str = "") -> None:
    """A provider's plain-HTTP answer: 429 and 5xx may pass (Transient); other 4xx end the run."""
    if status == 429 or status >= 500:
        raise Transient(f"{what} HTTP {status}")
    if status >= 400:
        raise ProviderFailed(f"{what}: HTTP {status}" + (f": {detail}" if detail else ""))


@dataclasses.dataclass(frozen=True)
class Poll:
    state: Literal["running", "succeeded", "failed", "canceled"]
    output: Any = None
    error: str | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    progress: str | None = None  # the provider's own status word, for the job's events


class CloudProvider(Protocol):
    name: str  # "replicate" | "modal"

    def unavailable(self) -> str | None: ...  # why it cannot be used (no token), never the token
    async def create(self, r: Resolved, inputs: dict[str, Any], files: dict[str, Any]) -> str: ...
    async def poll(self, r: Resolved, run_id: str) -> Poll: ...
    async def cancel(self, r: Resolved, run_id: str) -> None: ...
    async def fetch(self, url: str) -> tuple[bytes, str]: ...  # an output file: (bytes, content type)


@dataclasses.dataclass
class Outcome:
    """What a cloud run returns to the dispatcher: the result and what it cost."""

    result: Any
    cost: Cost


class Artifacts(Protocol):
    def read(self, uri: str) -> bytes: ...
    def put(self, data: bytes, *, name: str, prefix: str = ...) -> str: ...
    def content_type(self, uri: str) -> str: ...


Remember = Callable[[Job, int, dict[str, Any]], Awaitable[None]]
Progress = Callable[[Job, int, dict[str, Any]], Awaitable[None]]


async def _nothing(*_: Any) -> None:
    return None


class CloudBackend:
    """Runs the jobs of the apps it is given on one provider. `remember(job, attempt, ref)` writes
    the provider's id on the job row (and raises when the lease is gone)."""

    RETRIES = 5  # transient failures in a row within one run before the attempt fails
    BACKOFF_S = (0.5, 8.0)

    def __init__(self, provider: CloudProvider, *, apps: list[AppSpec], costs: CostsSpec, artifacts: Artifacts | None,
                 remember: Remember = _nothing, progress: Progress = _nothing):
        self.provider = provider
        self.targets: dict[str, Resolved] = {}
        for app in apps:
            target = app.cloud or app.fallback
            if target is not None and target.backend == provider.name:
                self.targets[app.id] = resolve(target, app.task)
        self.file_params = {a.id: [p.name for p in a.parameters if p.type == "file"] for a in apps}
        self.costs = costs
        self.artifacts = artifacts
        self.remember = remember
        self.progress = progress

    def run(self, job: Job, attempt: int, *, timeout_s: float, queue_timeout_s: float) -> StartedRun:
        state: dict[str, Any] = {}
        task = asyncio.ensure_future(self._run(job, attempt, timeout_s, state))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

        def cancel() -> None:
            task.cancel()
            if state.get("run_id") and not state.get("done"):
                # The prediction goes on billing unless cancelled there too (best effort, bounded).
                asyncio.ensure_future(self._cancel_remote(self.targets[job.app_id], state["run_id"]))

        def detach() -> None:
            portable = getattr(self.provider, "portable", None)
            if state.get("run_id") and portable is not None and not portable(state["run_id"]):
                cancel()  # only this process can follow it (a Modal endpoint call): stop it, don't orphan it
            else:
                task.cancel()

        return CloudRun(task, cancel, detach=detach)

    async def _cancel_remote(self, r: Resolved, run_id: str) -> None:
        try:
            await asyncio.wait_for(self.provider.cancel(r, run_id), r.target.call_timeout_s)
            log.info("%s run %s cancelled", self.provider.name, run_id)
        except Exception as e:
            log.warning("could not cancel %s run %s: %s", self.provider.name, run_id, _say(e))

    async def _call(self, r: Resolved, what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """One provider call under our deadline, retried while the failure is transient."""
        delay, cap = self.BACKOFF_S
        for n in range(1, self.RETRIES + 1):
            try:
                return await asyncio.wait_for(fn(), r.target.call_timeout_s)
            except asyncio.TimeoutError:
                why = f"{what}: no answer from {self.provider.name} within {r.target.call_timeout_s:g} s"
                wait = delay
            except Transient as e:
                why, wait = f"{what}: {e}", e.retry_after_s if e.retry_after_s is not None else delay
            if n == self.RETRIES:
                raise ProviderUnavailable(f"{self.provider.name} {why} ({n} tries)")
            log.info("%s %s; retrying in %.1f s", self.provider.name, why, min(wait, cap))
            await asyncio.sleep(min(wait, cap))
            delay = min(delay * 2, cap)

    async def _run(self, job: Job, attempt: int, timeout_s: float, state: dict[str, Any]) -> Outcome:
        r = self.targets[job.app_id]
        name = self.provider.name
        t0 = time.monotonic()
        ref = job.cloud_ref if job.cloud_ref and job.cloud_ref.get("provider") == name else None
        can = getattr(self.provider, "can_reattach", None)
        reattached = bool(ref and ref.get("id") and (can is None or can(str(ref["id"]))))
        if reattached:
            assert ref is not None
            run_id = state["run_id"] = str(ref["id"])  # an earlier attempt's run: re-attach, never create twice
            log.info("job %s attempt %d: re-attaching to %s run %s", job.id, attempt, name, run_id)
            await self.remember(job, attempt, {**ref, "attempt": attempt})
        else:
            run_id = state["run_id"] = await self._start(r, job, attempt)
        last = None
        while True:
            p: Poll = await self._call(r, "get", lambda: self.provider.poll(r, run_id))
            if reattached and p.state == "canceled":
                # An earlier attempt's run that was cancelled (its timeout): the job still wants one.
                reattached = False
                run_id = state["run_id"] = await self._start(r, job, attempt)
                continue
            reattached = False
            if p.state != "running":
                break
            if p.progress and p.progress != last:
                last = p.progress
                await self.progress(job, attempt, {"stage": f"{name}: {p.progress}"})
            if time.monotonic() - t0 > timeout_s:
                await self._cancel_remote(r, run_id)
                state["done"] = True
                try:  # the retry must start a new run, not re-attach to this cancelled one
                    await self.remember(job, attempt, {"provider": name, "id": None, "cancelled": run_id})
                except Exception as e:
                    log.debug("job %s: cancelled run not recorded: %s", job.id, e)
                err = JobTimeout(f"timed out after {timeout_s:g} s on {name}")
                err.cost = self._cost(r, p, time.monotonic() - t0, images=0)  # billed until the cancel
                raise err
            await asyncio.sleep(r.target.poll_interval_s)
        state["done"] = True
        seconds = time.monotonic() - t0
        if p.state == "canceled":  # not by us (our cancel stops this task first): the run is gone
            raise ProviderFailed(f"{name} {r.target.ref}: the run was cancelled at {name}")
        if p.state == "failed":
            err = ProviderFailed(f"{name} {r.target.ref}: {p.error or 'failed without a message'}")
            err.cost = self._cost(r, p, seconds, images=0)
            raise err
        stored = await self._fetch_outputs(r, job, p.output)
        result = await asyncio.to_thread(self._native_files, result=to_result(r, p.output, p.metrics, stored), job=job) \
            if r.output == "native" else to_result(r, p.output, p.metrics, stored)
        return Outcome(result, self._cost(r, p, seconds, images=len(stored)))

    async def _start(self, r: Resolved, job: Job, attempt: int) -> str:
        """Create the provider's run and record its id on the job row before anyone waits on it."""
        inputs, files = await asyncio.to_thread(self._inputs, r, job)
        create = asyncio.ensure_future(self._call(r, "create", lambda: self.provider.create(r, inputs, files)))
        try:
            run_id = await asyncio.shield(create)
        except asyncio.CancelledError:
            # Cancelled while the create was on its way: the provider may start (and bill) a run no
            # one knows of. Let the create finish and cancel what it started.
            create.add_done_callback(self._cancel_created(r))
            raise
        try:
            await self.remember(job, attempt, {"provider": self.provider.name, "id": run_id, "attempt": attempt,
                                               "target": r.target.ref})
        except BaseException:  # cancelled meanwhile, or the lease is gone: no one will wait on it
            await self._cancel_remote(r, run_id)
            raise
        return run_id

    def _cancel_created(self, r: Resolved) -> Callable[[asyncio.Future], None]:
        def done(create: asyncio.Future) -> None:
            if not create.cancelled() and create.exception() is None:
                asyncio.ensure_future(self._cancel_remote(r, create.result()))
        return done

    def cancel_detached(self, job: Job) -> bool:
        """Cancel the run a job's row names, which no router waits on (the job was cancelled or
        failed while queued between attempts). Best effort, in the background."""
        ref, r = job.cloud_ref or {}, self.targets.get(job.app_id)
        if r is None or ref.get("provider") != self.provider.name or not ref.get("id"):
            return False
        asyncio.ensure_future(self._cancel_remote(r, str(ref["id"])))
        return True

    def _cost(self, r: Resolved, p: Poll, seconds: float, images: int) -> Cost:
        if self.provider.name == "replicate":
            gs, usd = replicate_cost(r.pricing, p.metrics, images, self.costs)
            usage = {"provider": "replicate", "metrics": p.metrics, "pricing": r.pricing.model_dump(exclude_defaults=True)}
            if r.pricing.mode == "per_second":
                usage["usd_per_s"] = self.costs.replicate_per_s.get(r.pricing.hardware or "", 0.0)
        else:
            seconds = round(seconds, 3)  # the usage shows what the cost was computed from
            gs, usd = modal_cost(seconds, r.target.gpu, self.costs)
            usage = {"provider": "modal", "seconds": seconds, "gpu": r.target.gpu,
                     "usd_per_s": self.costs.modal_per_s.get(r.target.gpu or "", 0.0)}
        return Cost(gpu_seconds=round(gs, 6), usd=round(usd, 8), usage=usage)

    def _inputs(self, r: Resolved, job: Job) -> tuple[dict[str, Any], dict[str, Any]]:
        """The provider's input. File params: Replicate takes data URIs; Modal gets the bytes apart."""
        inputs = to_inputs(r, job.params)
        files: dict[str, Any] = {}
        for name in self.file_params.get(job.app_id, []):
            uri = job.params.get(name)
            if not uri or self.artifacts is None:
                continue
            data = self.artifacts.read(uri)
            key = r.inputs[name].name if r.inputs and r.inputs.get(name) else name  # type: ignore[union-attr]
            if self.provider.name == "replicate":
                inputs[key] = f"data:{self.artifacts.content_type(uri)};base64,{base64.b64encode(data).decode()}"
            else:
                files[name] = {"name": uri.rsplit("/", 1)[-1], "data_b64": base64.b64encode(data).decode()}
        return inputs, files

    async def _fetch_outputs(self, r: Resolved, job: Job, output: Any) -> list[dict[str, Any]]:
        out = []
        for n, url in enumerate(output_files(r, output)):
            data, ctype = await self._call(r, "download", lambda u=url: self.provider.fetch(u))
            if len(data) > MAX_OUTPUT_BYTES:
                raise ProviderFailed(f"{self.provider.name}: output file {n} is over {MAX_OUTPUT_BYTES} bytes")
            ext = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}.get(ctype.split(";")[0], "png")
            uri = await asyncio.to_thread(self._put, data, f"image-{n}.{ext}", job.app_id)
            out.append({"artifact": uri, "url": _http_path(uri), **_image_size(data)})
        return out

    def _put(self, data: bytes, name: str, app_id: str) -> str:
        if self.artifacts is None:
            raise ProviderFailed("the provider returned files and this router has no artifact store")
        return self.artifacts.put(data, name=name, prefix=f"cloud-{app_id}")

    def _native_files(self, *, result: Any, job: Job) -> Any:
        from gpu_orchestrator.service.cloud.payload import store_inlined

        return store_inlined(result, self.artifacts, prefix=f"cloud-{job.app_id}")


class CloudRun(StartedRun):
    """A cloud run also can be left running: a router that stops gracefully stops waiting on the
    prediction (`detach`) and hands the job back; whoever claims it next re-attaches."""

    def __init__(self, awaitable: Any, cancel: Callable[[], Any], detach: Callable[[], Any]):
        super().__init__(awaitable, cancel)
        self.detach = detach


def build_cloud(cfg: Any, artifacts: Artifacts | None, providers: dict[str, CloudProvider] | None = None
                ) -> dict[str, CloudBackend]:
    """A CloudBackend per provider some app uses (as its cloud or its fallback). `providers`
    replaces the real ones (tests)."""
    used = {t.backend for a in cfg.apps for t in (a.cloud, a.fallback) if t is not None}
    out = {}
    for name in sorted(used):
        provider = (providers or {}).get(name)
        if provider is None:
            if name == "replicate":
                from gpu_orchestrator.service.cloud.replicate import ReplicateProvider

                provider = ReplicateProvider(cfg.cloud.replicate)
            else:
                from gpu_orchestrator.service.cloud.modal import ModalProvider

                targets = [t for a in cfg.apps for t in (a.cloud, a.fallback) if t is not None and t.backend == name]
                provider = ModalProvider(cfg.cloud.modal, modes={"endpoint" if t.endpoint else "sdk" for t in targets})
        out[name] = CloudBackend(provider, apps=cfg.apps, costs=cfg.costs, artifacts=artifacts)
        why = provider.unavailable()
        if why:  # said at start (the stack's log); /v1/workers shows it too
            log.warning("cloud backend %s is unavailable: %s; its apps' jobs stay local or are refused", name, why)
    return out


def _http_path(uri: str) -> str:
    from gpu_orchestrator.store.artifacts import http_path

    return http_path(uri)


def _image_size(data: bytes) -> dict[str, int]:
    """Width and height of a PNG from its header (what the local models report), else nothing."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return {"width": int.from_bytes(data[16:20], "big"), "height": int.from_bytes(data[20:24], "big")}
    return {}


def _say(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:300]
