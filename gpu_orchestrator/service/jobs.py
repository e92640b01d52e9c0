"""JobService: what a caller can do with jobs (submit, cancel, get, list, wait, follow), over the
store and the event bus, the same for HTTP routes and Python handle methods. No Ray, no HTTP:
refusals are domain errors (core.jobs, core.apps) that the API maps to status codes.

The job row is the truth; events and the cancel flag are best effort. After each committed
transition, `Transitions.announce` counts it and publishes it, and never raises: a Redis outage
after a committed submit or cancel is a log line, not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Container, Iterator, Protocol

from gpu_orchestrator import logs
from gpu_orchestrator.bus.events import Event, follow as follow_events, reason
from gpu_orchestrator.core.apps import AppKind, AppSpec, text_problem
from gpu_orchestrator.core.config import OrchestratorConfig
from gpu_orchestrator.core.keys import OPEN, Caller, Forbidden, Scope
from gpu_orchestrator.core.jobs import InvalidRequest, Job, JobError, JobNotFound, JobStatus, id_prefix_range
from gpu_orchestrator.service.cloud.routing import CloudRouting
from gpu_orchestrator.service.intake import ArtifactLookup, Intake, LocalRunner
from gpu_orchestrator.service.transitions import Transitions
from gpu_orchestrator.store.base import JobIntake

log = logging.getLogger("gpu_orchestrator.jobs")

# A client that left: its job's cancel is tried again after these pauses (the store briefly away).
CANCEL_SOON_RETRIES_S = (0.5, 2.0, 5.0)


class EventSource(Protocol):
    """What the service needs from the event bus besides publishing (Transitions does that)."""

    def tail(self, job_id: uuid.UUID | str, after: str = "0-0", *, block_ms: int = 5_000) -> AsyncIterator[Event | None]: ...
    async def request_cancel(self, job_id: uuid.UUID | str) -> None: ...
    async def get_value(self, key: str) -> str | None: ...
    async def set_value(self, key: str, value: str, ttl_s: int) -> None: ...
    async def ping(self) -> bool: ...


class ClientGone(Exception):
    """The caller waiting for a job went away (`wait(..., gone=...)` said so)."""

    def __init__(self) -> None:
        super().__init__("client disconnected")


def _noop(*_: Any) -> None:
    return None


class JobService(Intake):
    def __init__(self, *, cfg: OrchestratorConfig, store: JobIntake, events: EventSource, transitions: Transitions,
                 deployed: Container[str], artifacts: ArtifactLookup | None = None,
                 on_submitted: Callable[[Job], None] = _noop, cancel_local: Callable[[uuid.UUID], Any] = _noop,
                 flag_timeout_s: float = 2.0, routing: CloudRouting | None = None,
                 cancel_cloud: Callable[[Job], Any] = _noop, runner: LocalRunner | None = None,
                 webhook_problem: Callable[[str], str | None] | None = None,
                 waiting: Callable[[str], dict[str, Any] | None] | None = None):
        self.cfg = cfg
        self.apps: dict[str, AppSpec] = {a.id: a for a in cfg.apps}
        self.store = store
        self.events = events
        self.transitions = transitions
        # Model deployments this router has a backend for (read on each submit: may change).
        self.deployed = deployed
        self.artifacts = artifacts
        self.on_submitted = on_submitted  # the dispatcher's poke, with the new job
        self.cancel_local = cancel_local  # the dispatcher cancels the request it holds for a job
        self.cancel_cloud = cancel_cloud  # ... and a queued job's detached cloud run
        self.runner = runner
        self.webhook_problem = webhook_problem  # why a job may not name a webhook URL (None: no sender here)
        self.waiting = waiting  # model -> what its queued jobs wait for (the arbiter's view), None: nothing
        self.flag_timeout_s = flag_timeout_s
        self.routing = routing or CloudRouting(cfg, {})  # where new jobs go (local or a cloud backend)
        self._attached: dict[uuid.UUID, int] = {}  # callers waiting on each job here (see attached)
        self._tasks: set[asyncio.Task] = set()

    def waiting_for(self, job: Job, status: JobStatus | None = None) -> dict[str, Any] | None:
        """What a queued job (as of `status`, else its row's) waits for before it can run here: its
        model's load (the arbiter), or None."""
        spec = self.apps.get(job.app_id)
        if (self.waiting is None or (status or job.status) != JobStatus.queued or spec is None or spec.kind != AppKind.local
                or job.route not in (None, "local")):
            return None
        return self.waiting(spec.deployment)

    def to_api(self, job: Job) -> dict[str, Any]:
        """The job as the API shows it: its row, and what a queued job waits for."""
        return {**job.to_api(), "waiting_for": self.waiting_for(job)}

    # -- intake: runnable_app, submit and their checks are in Intake (service/intake.py) ---------

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, job_id: uuid.UUID, caller: Caller = OPEN) -> Job:
        """The job, if the caller may see it: another key's job is JobNotFound (a 404: ids don't leak)."""
        caller.require(Scope.read)
        return await self._visible(job_id, caller)

    async def _visible(self, job_id: uuid.UUID, caller: Caller) -> Job:
        job = await self.store.aget(job_id)
        if not caller.sees(job.owner):
            raise JobNotFound(job_id)
        return job

    async def list(self, *, app_id: str | None = None, status: JobStatus | None = None, limit: int = 50,
                   cursor: str | None = None, caller: Caller = OPEN,
                   id_prefix: str | None = None) -> tuple[list[Job], str | None]:
        """Newest first. `id_prefix`: the jobs whose id starts with it (a short id, as the CLI shows)."""
        caller.require(Scope.read)
        for field, value in (("app_id", app_id), ("cursor", cursor)):
            if value is not None and (why := text_problem(value)):
                raise InvalidRequest(field, why)
        ids = None
        if id_prefix is not None:
            try:
                ids = id_prefix_range(id_prefix)
            except ValueError as e:
                raise InvalidRequest("id_prefix", str(e)) from None
        # Without read:all, a key lists its own jobs only.
        owner = None if caller.sees_all else caller.key_id
        try:
            return await asyncio.to_thread(self.store.list, app_id=app_id, status=status, limit=limit, cursor=cursor,
                                           owner=owner, ids=ids)
        except ValueError as e:  # a cursor this store did not hand out
            raise InvalidRequest("cursor", str(e)) from None

    # -- cancel -----------------------------------------------------------------------------------

    async def cancel(self, job_id: uuid.UUID, caller: Caller = OPEN) -> Job:
        if caller is not OPEN:
            caller.require(Scope.cancel)
            seen = await self._visible(job_id, caller)  # another key's job: 404, as for a read
            if not caller.may_cancel(seen.owner):
                raise Forbidden(f"this key ({caller.name}) may cancel its own jobs only")
        job, prev = await asyncio.to_thread(self.store.cancel, job_id)
        logs.set_job(job_id)
        log.info("cancelled (was %s)", prev.value)
        # The cancel is committed; what follows only hurries the model along and tells watchers, so
        # nothing here may turn it into an error (watchers also read the row).
        held = False
        if prev == JobStatus.running:
            try:  # the model checks this flag between steps
                await asyncio.wait_for(self.events.request_cancel(job_id), self.flag_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("cancel flag for job %s not set: %s", job_id, reason(e))
            try:  # the replica holding it also cancels the model request
                held = bool(self.cancel_local(job_id))
            except Exception as e:
                log.warning("job %s: local cancel failed: %s", job_id, e)
        if job.cloud_ref and not held and prev in (JobStatus.queued, JobStatus.running):
            # A cloud run this replica does not wait on: left going between attempts, or its router
            # died. No one will re-attach to it now; a live holder cancels it too (idempotent there).
            try:
                self.cancel_cloud(job)
            except Exception as e:
                log.warning("job %s: its cloud run was not cancelled: %s", job_id, e)
        await self.transitions.announce(job.id, job.app_id, JobStatus.cancelled, row=job)
        return job

    @contextlib.contextmanager
    def attached(self, job_id: uuid.UUID) -> Iterator[None]:
        """Marks a caller on this replica as waiting for the job, so cancel_soon from another one
        (a client that left) does not cancel it under this one."""
        self._attached[job_id] = self._attached.get(job_id, 0) + 1
        try:
            yield
        finally:
            n = self._attached.get(job_id, 0) - 1
            if n > 0:
                self._attached[job_id] = n
            else:
                self._attached.pop(job_id, None)

    def cancel_soon(self, job_id: uuid.UUID, why: str) -> None:
        """Cancel a job in the background (from a request being torn down), unless it is over or
        another caller on this replica still waits for it."""
        if self._attached.get(job_id):
            return

        async def go() -> None:
            # Nobody will ask again: a database blip must not leave the job running for no one.
            for delay in (*CANCEL_SOON_RETRIES_S, None):
                if self._attached.get(job_id):
                    return  # a caller on this replica waits for it again (a client that came back)
                try:
                    job = await self.get(job_id)
                    if not job.status.terminal:
                        await self.cancel(job_id)
                        log.info("job %s cancelled: %s", job_id, why)
                    return
                except JobError:
                    return  # finished meanwhile
                except Exception as e:
                    if delay is None:
                        log.warning("could not cancel job %s (%s): %s", job_id, why, reason(e))
                        return
                    log.info("cancelling job %s (%s) again in %g s: %s", job_id, why, delay, reason(e))
                    await asyncio.sleep(delay)

        task = asyncio.get_running_loop().create_task(go())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- watching ---------------------------------------------------------------------------------

    async def _row_status(self, job_id: uuid.UUID) -> dict[str, Any] | None:
        job = await self.get(job_id)
        return {"status": job.status.value, "result": job.result, "error": job.error} if job.status.terminal else None

    def follow(self, job_id: uuid.UUID, after: str = "0-0", *, block_ms: int = 2_000,
               retry_s: float = 1.0) -> AsyncIterator[Event | None]:
        """The job's events after `after` until its terminal status, through Redis outages: None on
        idle, a `gap` event where events may be lost, and the terminal status from the job row when
        its event is missing (see bus.events.follow)."""
        return follow_events(self.events, job_id, after, row_status=lambda: self._row_status(job_id),
                             block_ms=block_ms, retry_s=retry_s)

    async def wait(self, job_id: uuid.UUID, timeout_s: float,
                   gone: Callable[[], Awaitable[bool]] | None = None, caller: Caller = OPEN) -> Job:
        """The job once terminal, or as it is after timeout_s. `gone` is asked about twice a second
        whether the caller left; when it says so, ClientGone is raised."""
        if caller is not OPEN:
            await self.get(job_id, caller)  # another key's job: 404 before any waiting
        deadline = time.monotonic() + timeout_s
        fut = self.runner.outcome(job_id) if self.runner is not None else None
        if fut is not None:  # running here: its outcome comes in process, no event or read needed
            job = await self._local_outcome(fut, deadline, gone)
            if job is not None:
                return job
            if time.monotonic() > deadline:
                return await self.get(job_id)
        next_check = 0.0
        events = self.follow(job_id, block_ms=500, retry_s=0.5)
        try:
            async for ev in events:
                if ev is not None and ev.terminal:
                    break
                now = time.monotonic()
                if now > deadline:
                    break
                if gone is not None and now >= next_check:
                    next_check = now + 0.5
                    if await gone():
                        raise ClientGone()
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        return await self.get(job_id)

    @staticmethod
    async def _local_outcome(fut: asyncio.Future, deadline: float,
                             gone: Callable[[], Awaitable[bool]] | None) -> Job | None:
        """The terminal row from this replica's dispatcher; None when it ended otherwise (then the
        store says what happened) or the deadline passed. ClientGone as for wait."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            done, _ = await asyncio.wait({fut}, timeout=min(left, 0.5) if gone is not None else left)
            if done:
                return fut.result()
            if gone is not None and await gone():
                raise ClientGone()

    # -- lossy hints (OpenAI SDK retries) ----------------------------------------------------------

    async def recall(self, key: str) -> Job | None:
        """The job remembered under `key` (see remember), or None: unknown, expired, or Redis away."""
        try:
            earlier = await self.events.get_value(key)
        except Exception as e:  # lossy by design
            log.info("no job recalled: %s", reason(e))
            return None
        if not earlier:
            return None
        try:
            return await self.get(uuid.UUID(earlier))
        except (JobError, ValueError) as e:
            log.info("no job recalled: %s", e)
            return None

    async def remember(self, key: str, job_id: uuid.UUID, ttl_s: float) -> None:
        try:
            await self.events.set_value(key, str(job_id), int(ttl_s))
        except Exception as e:  # lossy by design: a retry then runs anew
            log.info("job %s not remembered: %s", job_id, reason(e))

    # -- health -----------------------------------------------------------------------------------

    async def health(self) -> tuple[dict[str, str], dict[str, str]]:
        """({"database": "ok"|"down", "redis": ...}, {what: short reason}) ; never the raw error."""
        checks: dict[str, str] = {}
        reasons: dict[str, str] = {}
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.ping), timeout=5.0)
            checks["database"] = "ok"
        except Exception as e:
            checks["database"], reasons["database"] = "down", reason(e)
        try:
            await self.events.ping()
            checks["redis"] = "ok"
        except Exception as e:
            checks["redis"], reasons["redis"] = "down", reason(e)
        return checks, reasons


def parse_job_id(v: str | uuid.UUID) -> uuid.UUID:
    if isinstance(v, uuid.UUID):
        return v
    try:
        return uuid.UUID(str(v))
    except ValueError:
        raise ValueError(f"job_id {v!r} is not a UUID") from None
