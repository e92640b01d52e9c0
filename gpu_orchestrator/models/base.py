"""The protocol every model deployment implements, and the per-job context it gets.

The router calls `run(job_id, params, attempt, timeout_s=..., queue_timeout_s=...)` on a model
deployment handle. A model implements `infer(params, ctx)` (sync or async); `ctx.progress(...)`
publishes events to the job's Redis stream and `ctx.check_cancelled()` stops work between steps when
the job was cancelled. Redis is best effort here: while it is down, progress events are dropped and
the cancel flag reads "not cancelled" (the router still cancels the request itself, and a request
cancelled while the flag cannot be read stops its run); a job never fails because of it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import os
import sys
import threading
import time
from typing import Any

from gpu_orchestrator import logs
from gpu_orchestrator.bus import workers
from gpu_orchestrator.bus.events import EventBus
# The errors a run ends with live in core (the service layer reads them); importable from here as before.
from gpu_orchestrator.core.model_errors import JobCancelled, JobTimeout, ModelLoadError, SlotTimeout
from gpu_orchestrator.models.host_memory import host_memory
from gpu_orchestrator.models.vram import PeakVram


log = logging.getLogger("gpu_orchestrator.models")

__all__ = ["JobCancelled", "JobContext", "JobTimeout", "ModelDeployment", "ModelLoadError", "ParkUnsupported", "SlotTimeout"]


class ParkUnsupported(Exception):
    """This model has no park/wake: the arbiter scales it to zero and it reloads from disk."""

_redis_warned_at = 0.0


def _redis_trouble(what: str, e: BaseException) -> None:
    """Log a Redis failure: a warning at most every 30 s per process, debug otherwise (a model may
    hit this on every step)."""
    global _redis_warned_at
    now = time.monotonic()
    if now - _redis_warned_at >= 30.0:
        _redis_warned_at = now
        log.warning("redis unavailable, %s (the job goes on): %s: %s", what, type(e).__name__, _first_line(e))
    else:
        log.debug("redis unavailable, %s: %s", what, e)


class JobContext:
    def __init__(self, bus: EventBus | None, job_id: str, attempt: int):
        self.bus = bus
        self.job_id = job_id
        self.attempt = attempt
        # The first look at the flag comes one interval into the work: a cancel before that also
        # cancels the request itself (ctx.cancel), and a short job then costs no Redis round trip.
        self._last_cancel_check = time.monotonic()
        self._cancelled = False

    def progress(self, **data: Any) -> None:
        if self.bus is not None:
            try:
                self.bus.publish(self.job_id, "progress", attempt=self.attempt, **data)
            except Exception as e:  # events may be lost; the job may not
                _redis_trouble("progress event dropped", e)

    def cancelled(self) -> bool:
        # Rate-limited: a model may call this every step; Redis is asked at most 20 times a second.
        now = time.monotonic()
        if not self._cancelled and self.bus is not None and now - self._last_cancel_check > 0.05:
            self._last_cancel_check = now
            try:
                self._cancelled = self.bus.is_cancelled(self.job_id)
            except Exception as e:  # the router cancels the request itself (ctx.cancel) when it must
                _redis_trouble("cancel flag not checked", e)
        return self._cancelled

    def cancel(self) -> None:
        """This attempt's request was cancelled (or timed out): the model stops at its next check."""
        self._cancelled = True

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise JobCancelled(f"job {self.job_id} cancelled")


class ModelDeployment:
    """Base class: state, load time and health for `GET /v1/workers`; the job entry point."""

    model_name = "model"
    synthetic = False
    reload_after_s = 60.0  # a failed load is retried on the next job at most this often
    # Jobs this replica runs at once (None: no limit). Models that keep per-call state in the loaded
    # object (a diffusers pipeline's scheduler, whisper's KV-cache hooks) need 1: later jobs wait here.
    max_concurrent: int | None = None
    # Successful results kept for a re-sent job (see run): few, and briefly: a rescue comes within a lease.
    RECENT_MAX = 64
    RECENT_TTL_S = 600.0

    def __init__(self, *, redis_url: str | None = None, vram_gb: float = 0.0):
        # A model calls Redis from its work loop (progress, cancel flag): after a failure it stops
        # asking for 10 s, so a hung Redis blocks a step for one timeout per 10 s, not per token.
        self._bus = EventBus(redis_url, cooldown_s=10.0) if redis_url else None
        self.declared_vram_gb = vram_gb
        self.state = "loading"
        self.load_error: str | None = None
        self.load_time_s: float | None = None
        self.fatal_error: str | None = None
        self.jobs_done = 0
        self.busy = 0
        # The warm tier (park/wake): host memory the parked model holds, and the last park and wake.
        self.host_gb = 0.0
        self.park_time_s: float | None = None
        self.wake_time_s: float | None = None
        self._vram_peak = PeakVram()  # the arbiter packs by the measured peak (docs/warm.md)
        self._loop: asyncio.AbstractEventLoop | None = None  # the replica's, for async offload hooks
        self.last_used = None  # wall-clock time of the last finished job
        self._deployment, self._replica_id = _replica_identity(self.model_name)
        self._gpu_index = _gpu_index()  # fixed for the life of the replica: Ray assigned its GPU
        logs.configure_from_env(component=f"model:{self._deployment}")
        self._stop = threading.Event()
        self._load_lock = threading.Lock()
        self._slots: asyncio.Semaphore | None = None  # made in the replica's event loop, on first use
        self._failed_at = 0.0
        self._running: dict[str, tuple[asyncio.Future, set]] = {}  # job id -> (its run here, requests awaiting it)
        self._live: set[asyncio.Future] = set()  # infer calls still computing (also after their job ended)
        self._recent: collections.OrderedDict[str, tuple[float, int, Any]] = collections.OrderedDict()
        self._deciding: set[asyncio.Future] = set()  # abandoned runs: stop, or go on for a re-sent attempt
        if self._bus is not None:
            threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        self._try_load()

    def _try_load(self) -> None:
        with self._load_lock:
            if self.state == "resident":
                return
            self.state = "loading"
            t0 = time.perf_counter()
            try:
                self.load()
            except Exception as e:
                self.state = "failed"
                self.load_error = f"{self.model_name} failed to load: {type(e).__name__}: {_first_line(e)}"
                self._failed_at = time.monotonic()
                log.exception("%s", self.load_error)
                return
            self.load_error = None
            self.load_time_s = time.perf_counter() - t0
            self.state = "resident"

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            try:
                workers.beat(self._bus.r, self._deployment, self._replica_id, self.info())
            except Exception as e:  # Redis down: heartbeats are best effort
                log.debug("heartbeat failed: %s", e)
            self._stop.wait(workers.HEARTBEAT_S)

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    def load(self) -> None:
        """Load weights. Subclasses override; runs once in the replica's constructor."""

    # -- the warm tier: park (leave the GPU, keep the built model in host memory) and wake ----------

    def parked_modules(self) -> list[Any] | None:
        """The torch modules a park moves (the loaded model's); None: this model cannot park.
        Models that can park name them here and drop them in unload()."""
        return None

    def offload(self) -> float:
        """Move the loaded model's tensors to host memory and return the GB held there. Runs in a
        worker thread. A model that parks other than by moving its modules (vLLM) overrides this
        and onload."""
        from .parking import tensors_gb, to_host

        mods = self.parked_modules()
        if mods is None:
            raise ParkUnsupported(f"{self.model_name} cannot park (it reloads from disk instead)")
        to_host(mods)
        return tensors_gb(mods)

    def onload(self) -> None:
        """Move the parked tensors back to the model's device. Runs in a worker thread."""
        from .parking import to_device

        to_device(self.parked_modules() or [], self.device)

    def unload(self) -> None:
        """Drop the loaded model, after a park or wake that failed half-way: the next job loads it
        afresh (state cold), so no job ever runs on half a model."""

    async def park(self) -> dict[str, Any]:
        """Leave the GPU and keep the built model in host memory (state `warm`). Refused, with the
        reason, unless the model is resident and has no job here; the next job (or wake) brings it
        back. The process, its CUDA context and its Serve replica stay."""
        # _live: a cancelled or timed-out job's work can outlive its request (a thread cannot be
        # killed; vLLM aborts on the way out): its tensors must stay where they are until it stops.
        if self.state != "resident" or self.busy or self._running or self._live:
            jobs = len(self._running) or self.busy or len(self._live)
            why = f"{jobs} job(s) here" if self.state == "resident" else f"it is {self.state}"
            return self._answer({"parked": False, "why": why})
        self.state = "parking"  # set on the event loop: a job arriving from now on waits for the wake
        self._loop = asyncio.get_running_loop()
        return self._answer(await asyncio.to_thread(self._park))

    def _answer(self, out: dict[str, Any]) -> dict[str, Any]:
        """A park's or wake's answer, with the state it left and this replica's id and clock (the
        arbiter compares it with this replica's heartbeats, stamped by the same clock)."""
        return {**out, "state": self.state, "replica_id": self._replica_id, "at": time.time()}

    def _park(self) -> dict[str, Any]:
        with self._load_lock:
            t0 = time.perf_counter()
            try:
                host_gb = float(self.offload())
            except ParkUnsupported as e:  # the arbiter stops it instead, as without the warm tier
                self.state = "resident"
                return {"parked": False, "unsupported": True, "why": str(e)}
            except Exception as e:
                self._drop(f"park failed: {type(e).__name__}: {_first_line(e)}")
                return {"parked": False, "state": self.state, "why": f"park failed: {_first_line(e)}"}
            self.host_gb, self.park_time_s, self.state = host_gb, time.perf_counter() - t0, "warm"
        log.info("parked in %.3f s: %.2f GB held in host memory", self.park_time_s, host_gb)
        return {"parked": True, "seconds": self.park_time_s, "host_gb": host_gb}

    async def wake(self) -> dict[str, Any]:
        """Back to the GPU from host memory (state resident); a wake that fails leaves it cold."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._wake)
        return self._answer({"seconds": self.wake_time_s})

    def _wake(self) -> None:
        while True:
            with self._load_lock:
                if self.state == "warm":
                    break
                if self.state != "parking":
                    return  # woken meanwhile (or never parked)
            time.sleep(0.01)  # the park's thread has not taken the lock yet: wake after it
        with self._load_lock:
            if self.state != "warm":
                return
            self.state = "waking"
            t0 = time.perf_counter()
            try:
                self.onload()
            except Exception as e:
                self._drop(f"wake failed: {type(e).__name__}: {_first_line(e)}")
                return
            self.wake_time_s, self.host_gb, self.state = time.perf_counter() - t0, 0.0, "resident"
        log.info("woke in %.3f s", self.wake_time_s)

    def _drop(self, why: str) -> None:
        log.warning("%s: dropping the model; the next job loads it afresh", why)
        if "CUDA error" in why:  # a poisoned CUDA context: have Serve replace this replica (as _run does)
            self.fatal_error = why
        try:
            self.unload()
        except Exception:
            log.exception("unloading after %s", why)
        from .parking import release_gpu_memory

        release_gpu_memory()
        self.host_gb, self.state = 0.0, "cold"

    def infer(self, params: dict[str, Any], ctx: JobContext) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    async def run(self, job_id: str, params: dict[str, Any], attempt: int = 1, timeout_s: float | None = None,
                  queue_timeout_s: float | None = None) -> Any:
        """Run one job. `timeout_s` bounds the work from when it starts here (JobTimeout);
        `queue_timeout_s` bounds the wait for a free slot before that (SlotTimeout).

        A job sent again while this replica still runs it, or shortly after it succeeded here (its
        router died before recording the result, and the lease rescue re-queued it), re-attaches to
        that run instead of repeating GPU work: same params, same job, the result is the same."""
        done = self._recent.get(job_id)
        if done is not None and time.monotonic() - done[0] < self.RECENT_TTL_S:
            log.info("job %s attempt %d: returning the result of attempt %s run here earlier", job_id, attempt, done[1])
            return done[2]
        entry = self._running.get(job_id)
        if entry is not None and not entry[0].done():
            log.info("job %s attempt %d: re-attached to the run already in progress here", job_id, attempt)
        else:
            work = asyncio.ensure_future(self._run_job(job_id, params, attempt, timeout_s, queue_timeout_s))
            entry = (work, set())
            self._running[job_id] = entry
            work.add_done_callback(lambda t: self._finished(job_id, attempt, t))
        work, waiters = entry
        me = object()
        waiters.add(me)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            waiters.discard(me)
            if not waiters:
                self._abandoned(job_id, work)
            raise
        finally:
            waiters.discard(me)

    def _abandoned(self, job_id: str, work: asyncio.Future) -> None:
        """Every request for a run was cancelled. A cancelled job (its flag set: DELETE sets it before
        cancelling the request) stops, and so does one whose flag cannot be read (Redis down: the
        request's cancel is the only word then). Otherwise its router went away without cancelling the
        job (it died: Serve's gRPC cuts the call with the connection; it stopped and handed its lease
        back; it lost the lease in a stall): the run goes on, bounded by its timeout, and the job's
        next attempt re-attaches to it or takes its result (run) instead of repeating GPU work."""
        if self._bus is None:
            work.cancel()
            return

        async def decide() -> None:
            try:
                cancelled = await asyncio.to_thread(self._bus.is_cancelled, job_id)
            except Exception as e:
                _redis_trouble("cancel flag not read; stopping the run", e)
                cancelled = True
            entry = self._running.get(job_id)
            if entry is not None and entry[0] is work and entry[1]:
                return  # re-attached meanwhile: a live request waits on it
            if cancelled:
                work.cancel()
            elif not work.done():
                log.info("job %s: its request went away without a cancel; the run goes on for its next attempt", job_id)

        task = asyncio.ensure_future(decide())
        self._deciding.add(task)  # a task nobody holds may be collected before it runs
        task.add_done_callback(self._deciding.discard)

    def _finished(self, job_id: str, attempt: int, task: asyncio.Future) -> None:
        if self._running.get(job_id, (None,))[0] is task:
            del self._running[job_id]
        if task.cancelled() or task.exception() is not None:
            return  # only a success is worth handing to a later attempt
        self._recent[job_id] = (time.monotonic(), attempt, task.result())
        while len(self._recent) > self.RECENT_MAX:
            self._recent.popitem(last=False)

    async def _run_job(self, job_id: str, params: dict[str, Any], attempt: int, timeout_s: float | None,
                       queue_timeout_s: float | None) -> Any:
        logs.set_job(job_id, attempt)  # this task's records carry the job (gpu_orchestrator/logs.py)
        t0 = time.monotonic()
        try:
            out = await self._run_job_here(job_id, params, attempt, timeout_s, queue_timeout_s)
        except BaseException as e:
            log.info("attempt %d ended after %.3f s: %s", attempt, time.monotonic() - t0, type(e).__name__)
            raise
        log.info("attempt %d done in %.3f s", attempt, time.monotonic() - t0)
        return out

    async def _run_job_here(self, job_id: str, params: dict[str, Any], attempt: int, timeout_s: float | None,
                            queue_timeout_s: float | None) -> Any:
        if self.state in ("parking", "warm", "waking"):  # a parked model's job wakes it, never fails for it
            # (another job's wake holds the load lock while `waking`: _wake waits for it, then sees resident)
            self._loop = asyncio.get_running_loop()
            await asyncio.to_thread(self._wake)
        if self.state == "cold":
            await asyncio.to_thread(self._try_load)
        if self.load_error is not None and time.monotonic() - self._failed_at >= self.reload_after_s:
            await asyncio.to_thread(self._try_load)
        if self.load_error is not None:
            raise ModelLoadError(self.load_error)
        ctx = JobContext(self._bus, job_id, attempt)
        if self.max_concurrent is None:
            return await self._run(params, ctx, timeout_s)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        if self._slots.locked():
            await asyncio.to_thread(ctx.progress, stage="waiting for the model", in_flight=self.busy)
        await self._take_slot(queue_timeout_s)
        try:
            ctx.check_cancelled()
            return await self._run(params, ctx, timeout_s)
        finally:
            self._slots.release()

    async def _take_slot(self, limit_s: float | None) -> None:
        """Acquire a slot within limit_s. Not wait_for: on Python < 3.12 it can drop an acquire that
        completes as the timeout fires, leaking the slot."""
        assert self._slots is not None
        acquire = asyncio.ensure_future(self._slots.acquire())
        try:
            await asyncio.wait({acquire}, timeout=limit_s)  # never cancels `acquire` itself
        except BaseException:  # this request was cancelled while waiting
            if acquire.done() and not acquire.cancelled():
                self._slots.release()
            else:
                acquire.cancel()  # Semaphore.acquire hands back a slot it got while being cancelled
            raise
        if not acquire.done():
            acquire.cancel()
            raise SlotTimeout(f"waited {limit_s:g} s for a free replica slot ({self.busy} job(s) running on it)")

    async def _run(self, params: dict[str, Any], ctx: JobContext, timeout_s: float | None = None) -> Any:
        self.busy += 1
        is_async = inspect.iscoroutinefunction(self.infer)
        task = asyncio.ensure_future(self.infer(params, ctx) if is_async else asyncio.to_thread(self.infer, params, ctx))
        self._live.add(task)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # an abandoned task's error is not news
        task.add_done_callback(self._live.discard)
        try:
            # Not cancelled with the request (asyncio.wait never cancels what it waits on): a thread
            # cannot be killed, so on a cancel or timeout the work is told to stop at its next step,
            # and a one-at-a-time model keeps its slot until then.
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                await self._stop_work(task, ctx, is_async)
                raise JobTimeout(f"timed out after {timeout_s:g} s")
            return task.result()
        except asyncio.CancelledError:
            await self._stop_work(task, ctx, is_async)
            raise
        except Exception as e:
            if "CUDA error" in str(e):
                # A CUDA error poisons the process's context: have Serve replace this replica.
                self.fatal_error = f"{type(e).__name__}: {_first_line(e)}"
            raise
        finally:
            self.busy -= 1
            self.jobs_done += 1
            self.last_used = time.time()

    async def _stop_work(self, task: asyncio.Future, ctx: JobContext, is_async: bool) -> None:
        ctx.cancel()
        if is_async:
            task.cancel()  # a coroutine can stop now (vLLM aborts the request on the way out)
        if self.max_concurrent is not None:
            with contextlib.suppress(BaseException):
                await task

    def info(self) -> dict[str, Any]:
        vram = None
        # Only if the model already imported torch: a heartbeat must stay cheap (the first
        # `import torch` can take seconds, and would delay the first beat past the key's TTL).
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            vram = torch.cuda.memory_reserved() / 2**30
        peak = self._vram_peak.sample(torch)
        ram = host_memory()  # the node's, for the arbiter's warm-tier budget
        return {
            "model": self.model_name,
            "deployment": self._deployment,
            "replica_id": self._replica_id,
            "synthetic": self.synthetic,
            "state": "busy" if self.busy else self.state,
            "pid": os.getpid(),
            "node": os.uname().nodename,
            "node_id": _node_id(),
            "gpu_index": self._gpu_index,
            "load_time_s": self.load_time_s,
            "host_held_gb": self.host_gb,
            "host_total_gb": ram[0] if ram else None,
            "host_free_gb": ram[1] if ram else None,
            "park_time_s": self.park_time_s,
            "wake_time_s": self.wake_time_s,
            "load_error": self.load_error,
            "vram_declared_gb": self.declared_vram_gb,
            "vram_held_gb": vram,
            "vram_peak_gb": peak,
            "jobs_done": self.jobs_done,
            "in_flight": self.busy,
            "last_used": self.last_used,
        }

    def check_health(self) -> None:
        # A failed load does not fail the health check: the replica stays up to fail its jobs with
        # the load error (a restart loop would leave them waiting). A CUDA error does.
        if self.fatal_error:
            raise RuntimeError(f"{self.model_name}: unusable after {self.fatal_error}")


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _replica_identity(default: str) -> tuple[str, str]:
    """(deployment name, replica id) inside Serve; (default, pid) outside it (unit tests)."""
    from gpu_orchestrator.serve.context import deployment_and_replica  # Ray stays in serve/

    return deployment_and_replica(default)


def _node_id() -> str | None:
    from gpu_orchestrator.serve.context import node_id

    return node_id()


def _gpu_index() -> int | None:
    from gpu_orchestrator.serve.context import gpu_index

    return gpu_index()
