"""Claims: the dispatcher's side that finds and claims work. Which (app, route) queues this
router runs, claiming up to each one's in-flight cap, moving a local app's queued jobs to its cloud
fallback when its model cannot be placed or fails to load, and settling queued jobs nothing here
will ever run. A mixin of Dispatcher (service/dispatcher.py), over its state.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Callable

from gpu_orchestrator.core.apps import AppKind, AppSpec
from gpu_orchestrator.core.config import OrchestratorConfig
from gpu_orchestrator.core.jobs import JobStatus
from gpu_orchestrator.service.cloud.backend import CloudBackend
from gpu_orchestrator.service.cloud.routing import CloudRouting
from gpu_orchestrator.service.inflight import InFlight
from gpu_orchestrator.service.transitions import Transitions
from gpu_orchestrator.store.base import JobLeases, LeaseKey

log = logging.getLogger("gpu_orchestrator.dispatcher")  # the dispatcher's records, one logger


class Claims:
    # What it uses of the Dispatcher (set there).
    cfg: OrchestratorConfig
    store: JobLeases
    transitions: Transitions
    owner: str
    lease_s: float
    gate: Callable[[str], bool]
    refuse: Callable[[str], str | None]
    cloud: dict[str, CloudBackend]
    routing: CloudRouting
    inflight: dict[LeaseKey, InFlight]
    _claiming: asyncio.Future | None
    _unrunnable_since: dict[tuple[str, str | None], float]
    _waiting: dict[str, set[str | None]]
    _sent_at: dict[str, float]
    _stopping: bool
    _mine: Callable[[str, str | None], int]
    _execute: Callable[..., Any]

    def _usable(self, backend: str | None) -> bool:
        return backend in self.cloud and self.routing.why_unavailable(backend) is None

    def _routes_for(self, app: AppSpec) -> set[str | None]:
        """The routes this router runs the app's jobs on (None: local)."""
        if app.kind != AppKind.local:
            return {app.kind.value} if self._usable(app.kind.value) else set()
        fb = app.fallback
        return {None, fb.backend} if fb is not None and fb.when != "never" and self._usable(fb.backend) else {None}

    async def _settle_stranded(self) -> None:
        """Queued jobs nothing here will run would wait for ever: an app no longer configured, a
        cloud-only app whose backend is unavailable (no token), a local app's jobs sent to a cloud
        backend it no longer uses or cannot reach. Once this router has seen them so for the grace
        period (a rolling update may bring a replica that can), and only jobs older than it: jobs
        of a local app go back to its local queue; the others fail, saying why."""
        grace = self.cfg.router.unconfigured_app_grace_s
        now = time.monotonic()
        stranded = {(app_id, route) for app_id, routes in self._waiting.items() for route in routes
                    if (spec := self.cfg.app(app_id)) is None or route not in self._routes_for(spec)}
        for key in list(self._unrunnable_since):
            if key not in stranded:
                del self._unrunnable_since[key]
        for app_id, route in sorted(stranded, key=str):
            if now - self._unrunnable_since.setdefault((app_id, route), now) < grace:
                continue
            spec = self.cfg.app(app_id)
            if spec is None:
                await self._fail_queued(app_id, f"app {app_id} is no longer configured", older_than_s=grace, route=route)
            elif spec.kind != AppKind.local:
                why = self.routing.why_unavailable(spec.kind.value) or "no backend for it"
                await self._fail_queued(app_id, f"app {app_id} runs on {spec.kind.value}, which is unavailable here "
                                        f"({why})", older_than_s=grace, route=route)
            elif route is not None:
                fb = spec.fallback
                why = (self.routing.why_unavailable(route) if fb is not None and fb.backend == route and fb.when != "never"
                       else "no longer its fallback") or "unavailable"
                reason = f"{route} is unavailable here ({why}): back to the local queue"
                for job_id in await asyncio.to_thread(self.store.reroute_queued, app_id, None, reason, frm=route,
                                                      older_than_s=grace):
                    log.warning("job %s: %s", job_id, reason)
                    await self._tell(job_id, {"stage": reason, "backend": "local"})

    async def _claim_all(self, only: set[tuple[str, str | None]] | None = None) -> None:
        """Claim and start what may run now: of every app with queued jobs, or of the (app, route)
        queues in `only` (a claim that finds nothing costs one statement)."""
        if only is None:
            self._waiting = waiting = await asyncio.to_thread(self.store.apps_with_queued)
        else:
            waiting = {}
            for app_id, route in only:
                waiting.setdefault(app_id, set()).add(route)
                self._waiting.setdefault(app_id, set()).add(route)
        for app in self.cfg.apps:
            routes = waiting.get(app.id)
            if not routes:
                continue
            if app.kind != AppKind.local:
                # A router without the token leaves them to one that has it (a rolling update).
                if app.kind.value in routes and app.cloud is not None and self._usable(app.kind.value):
                    await self._claim(app, app.kind.value, app.cloud.max_in_flight)
                continue
            fb = app.fallback
            usable = fb is not None and fb.backend in self._routes_for(app)
            if None in routes:
                live = self.refuse(app.deployment)
                # With a usable fallback, a model the arbiter found unplaceable a moment ago still is
                # (asking the routing also makes it remember what the arbiter says now, for submits).
                remembered = self.routing.unplaceable(app.deployment) if usable else None
                why = live or remembered
                if usable and (why or self.routing.failing(app.deployment)):
                    routes = routes | set(await self._send_to_fallback(app, why))
                if live:
                    # What is still local now can never run here (the fallback declined it, or is unusable).
                    await self._fail_queued(app.id, f"no capacity: {live}")
                elif not why and self.gate(app.deployment):  # else its jobs wait (and drive the arbiter)
                    await self._claim(app, None, app.max_in_flight)
            if usable and fb is not None and fb.backend in routes:
                await self._claim(app, fb.backend, fb.max_in_flight)

    async def _send_to_fallback(self, app: AppSpec, unplaceable: str | None) -> list[str]:
        """The app's queued local jobs its fallback takes move there: its model cannot be placed or
        fails to load. Jobs it declines (a param it does not take, over max_cost_per_job) stay.
        Returns the route they went to, if any did."""
        fb = app.fallback
        assert fb is not None
        reason = (f"no local GPU can hold the model ({unplaceable})" if unplaceable
                  else f"the local model fails to load ({self.routing.failing(app.deployment)})")
        now = time.monotonic()
        if not unplaceable and now - self._sent_at.get(app.id, 0.0) < 1.0:
            return []  # failing to load: declined jobs stay queued; look again in a second, not every tick
        self._sent_at[app.id] = now
        moved: list[uuid.UUID] = []
        cursor = None
        while True:  # every page: what is left local after this may be failed as unplaceable
            queued, cursor = await asyncio.to_thread(self.store.list, app_id=app.id, status=JobStatus.queued,
                                                     limit=500, cursor=cursor)
            ok = [j.id for j in queued if j.route is None and self.routing.declines(app, j.params) is None]
            if ok:
                moved += await asyncio.to_thread(self.store.reroute_queued, app.id, fb.backend, reason, ids=ok)
            if cursor is None:
                break
        for job_id in moved:
            log.info("job %s -> %s: %s", job_id, fb.backend, reason)
        return [fb.backend] if moved else []

    async def _claim(self, app: AppSpec, route: str | None, cap: int) -> None:
        """Claim what this replica may run of the app's jobs on `route` (None: local) and start them."""
        free = cap - self._mine(app.id, route)
        if free <= 0 or self._stopping:
            return
        # Shielded: a graceful stop waits for a claim in progress, then hands its jobs back too.
        self._claiming = asyncio.ensure_future(asyncio.to_thread(
            self.store.claim, app_id=app.id, owner=self.owner, limit=free, lease_s=self.lease_s,
            max_in_flight=cap, route=route,
        ))
        jobs = await asyncio.shield(self._claiming)
        if len(jobs) < free:  # nothing more to claim now: a freed slot need not ask again (see _execute)
            self._waiting.get(app.id, set()).discard(route)
        if self._stopping:
            return
        for job in jobs:
            f = InFlight(job)
            self.inflight[f.key] = f
            f.task = asyncio.get_running_loop().create_task(self._execute(f))

    async def _fail_queued(self, app_id: str, error: str, older_than_s: float | None = None,
                           route: str | None = None) -> None:
        """queued -> failed for the app's jobs (on `route`) that can never run here, each announced."""
        for job_id in await asyncio.to_thread(self.store.fail_queued, app_id, error, older_than_s=older_than_s,
                                              route=route):
            log.warning("job %s failed: %s", job_id, error)
            await self.transitions.announce(job_id, app_id, JobStatus.failed, error=error)
