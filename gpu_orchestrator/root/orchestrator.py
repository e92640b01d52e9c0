"""The orchestrator, built from its ports: the job service, the dispatcher, the arbiter loop (when
the config turns it on), the fleet view, retention, auth and reports, with the FastAPI app and the
Python handle methods on top. It owns start (`start`, at once when an event loop runs, else on the
first call), the gauge loop, and shutdown (`aclose`: leases handed back, the leader lock given up).
What it runs on comes in `Ports`; serve/router.py and root/memory.py build them."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from typing import Any, Awaitable, Callable, Mapping

from fastapi import FastAPI

from gpu_orchestrator.api.app import create_app
from gpu_orchestrator.api.limits import Limits
from gpu_orchestrator.store.artifacts import ArtifactStore
from gpu_orchestrator.bus.decisions import DecisionBoard
from gpu_orchestrator.core.config import OrchestratorConfig
from gpu_orchestrator.core.jobs import Job, JobStatus
from gpu_orchestrator.root.loop_watch import LoopWatch
from gpu_orchestrator.service.arbiter.loop import LEADER_LOCK_KEY, ArbiterLoop
from gpu_orchestrator.service.arbiter.ports import ClusterView
from gpu_orchestrator.service.arbiter.views import quiet
from gpu_orchestrator.service.auth import Auth, KeyCache, KeyLookup
from gpu_orchestrator.service.backends import ModelBackend
from gpu_orchestrator.service.dispatcher import Dispatcher
from gpu_orchestrator.service.fleet import Fleet, load_failures
from gpu_orchestrator.service.jobs import JobService, parse_job_id
from gpu_orchestrator.service.outages import reason
from gpu_orchestrator.service.reports import Reports
from gpu_orchestrator.service.retention import Retention
from gpu_orchestrator.service.transitions import Transitions
from gpu_orchestrator.service.webhooks import WebhookQueue, WebhookSender

log = logging.getLogger("gpu_orchestrator.router")

GAUGE_INTERVAL_S = 2.0


@dataclasses.dataclass
class Ports:
    """What the orchestrator runs on. `store`: a JobStore that also reports and gives a leader lock
    (PostgresJobStore, MemoryJobStore); `events`: the event bus (AsyncEventBus, MemoryEventBus);
    `metrics`: the job metrics and the gauges (serve/metrics.py's ServeMetrics, root/memory.py's);
    `heartbeats`: the model replicas' latest heartbeats; `board`: where the arbiter's leader
    publishes its decision (needed when the arbiter is on)."""

    store: Any
    events: Any
    backends: Mapping[str, ModelBackend]
    metrics: Any
    cluster: ClusterView
    heartbeats: Callable[[], Awaitable[list[dict[str, Any]]]]
    owner: str
    board: DecisionBoard | None = None
    keys: KeyLookup | None = None
    key_cache: KeyCache | None = None
    artifacts: ArtifactStore | None = None
    cloud: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    webhooks: WebhookQueue | None = None  # where due webhook deliveries wait (None: no webhooks)


class _Beats:
    """The arbiter reads heartbeats through an object with read_all()."""

    def __init__(self, read_all: Callable[[], Awaitable[list[dict[str, Any]]]]):
        self.read_all = read_all


class Orchestrator:
    def __init__(self, cfg: OrchestratorConfig, ports: Ports):
        self.cfg = cfg
        rc = cfg.router
        self.ports = ports
        self.store, self.bus, self.metrics, self.owner = ports.store, ports.events, ports.metrics, ports.owner
        self.backends, self.artifacts, self.cluster, self.cloud = ports.backends, ports.artifacts, ports.cluster, ports.cloud
        self.transitions = Transitions(self.bus, self.metrics, timeout_s=rc.redis_timeout_s)
        self.arbiter = self._arbiter() if cfg.arbiter.enabled else None
        wh = rc.webhooks  # loopback receivers: the composition root resolves `None` from where it listens
        self.webhooks = (WebhookSender(ports.webhooks, wh, allow_loopback=bool(wh.allow_loopback))
                         if ports.webhooks is not None else None)
        self._load_failures: dict[str, str] = {}  # model -> load error, from the replicas' heartbeats
        self.dispatcher = Dispatcher(
            cfg=cfg, store=self.store, transitions=self.transitions, backends=self.backends, owner=self.owner,
            gate=self.arbiter.dispatchable if self.arbiter else None,
            refuse=self.arbiter.unplaceable if self.arbiter else None,
            cloud=self.cloud, failing=self._load_failures.get,
        )
        self.jobs = JobService(
            cfg=cfg, store=self.store, events=self.bus, transitions=self.transitions, deployed=self.backends,
            artifacts=self.artifacts, on_submitted=self._submitted, cancel_local=self.dispatcher.cancel_local,
            flag_timeout_s=rc.redis_timeout_s, routing=self.dispatcher.routing, cancel_cloud=self.dispatcher.cancel_detached,
            runner=self.dispatcher, webhook_problem=self.webhooks.url_problem if self.webhooks is not None else None,
            waiting=self.arbiter.waiting_for if self.arbiter is not None else None,
        )
        arbiter = self.arbiter
        self.fleet = Fleet(cfg, self.store, heartbeats=ports.heartbeats, replica_states=self.cluster.replica_states,
                           snapshot=(lambda: arbiter.snapshot) if arbiter is not None else None,
                           cloud=self.dispatcher.routing.unavailable)
        # Terminal jobs older than router.retention_days go, with their artifacts and streams.
        self.retention = Retention(store=self.store, artifacts=self.artifacts, streams=self.bus,
                                   retention_days=rc.retention_days, batch=rc.prune_batch, interval_s=rc.prune_interval_s)
        # API keys: required unless router.auth is off (build_app resolves auto by the HTTP host).
        self.key_cache = ports.key_cache
        self.auth = Auth(ports.keys, required=rc.auth != "off", cache=ports.key_cache)
        self.reports = Reports(self.store, cfg.costs)
        self.api: FastAPI | None = None
        self._started = False
        self._gauge: asyncio.Task | None = None
        self.loop_watch = LoopWatch()
        try:
            asyncio.get_running_loop()
            self.start()
        except RuntimeError:
            pass  # no loop yet: started on the first submit or handle call

    def _arbiter(self) -> ArbiterLoop:
        if self.ports.board is None:
            raise ValueError("the arbiter is on but no decision board was given")
        return ArbiterLoop(
            cfg=self.cfg, store=self.store, lock=self.store.leader_lock(LEADER_LOCK_KEY), board=self.ports.board,
            cluster=self.cluster, heartbeats=_Beats(self.ports.heartbeats), owner=self.owner, metrics=self.metrics,
            on_change=lambda: self.dispatcher.poke(), backends=self.ports.backends,
        )

    # -- lifecycle --------------------------------------------------------------------------------

    def asgi(self) -> FastAPI:
        if self.api is None:
            self.api = create_app(jobs=self.jobs, fleet=self.fleet, artifacts=self.artifacts,
                                  limits=Limits.from_config(self.cfg.router), retention=self.retention,
                                  auth=self.auth, reports=self.reports, webhooks=self.webhooks)
        return self.api

    def start(self) -> None:
        """The dispatcher, retention, the arbiter loop and the gauges (once; needs a running loop)."""
        if not self._started:
            self._started = True
            self.dispatcher.start()
            self.retention.start()
            if self.arbiter is not None:
                self.arbiter.start()
            if self.webhooks is not None:
                self.webhooks.start()
            self._gauge = asyncio.get_running_loop().create_task(self._gauge_loop())
            self.loop_watch.start()

    def _submitted(self, job: Job) -> None:
        self.start()
        if job.status == JobStatus.queued:  # claimed here at once, no query for apps with work
            self.dispatcher.poke(job.app_id, job.route)
            if self.arbiter is not None and quiet(self.arbiter.snapshot):
                self.arbiter.poke()  # idle, it looks every idle_tick_s: this job's model loads now

    async def _gauge_loop(self) -> None:
        watch_loads = any(a.fallback is not None for a in self.cfg.apps)
        while True:
            self.metrics.flush()  # a quiet second's counts too
            self.metrics.set_queues(self.jobs.apps, self.dispatcher.queue_stats)
            if self.arbiter is not None:  # every replica, from the decision it acts on (serve/metrics.py)
                self.metrics.set_arbiter(self.arbiter.snapshot)
            if watch_loads:  # a model failing to load sends its app's jobs to the fallback
                try:
                    failures = load_failures(await self.ports.heartbeats())
                    self._load_failures.clear()
                    self._load_failures.update(failures)
                except Exception as e:  # heartbeats are in Redis: keep the last view
                    log.debug("heartbeats unavailable: %s", reason(e))
            await asyncio.sleep(GAUGE_INTERVAL_S)

    async def aclose(self) -> None:
        """Stop: the leases held here go back at once (not a lease_s later), and the arbiter's
        leader lock too, so another replica leads at once."""
        if self._gauge is not None:
            self._gauge.cancel()
        self.loop_watch.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.retention.stop()
        try:
            await asyncio.wait_for(self.dispatcher.release_all(), timeout=10.0)
        except Exception as e:  # the leases still expire on their own
            log.warning("could not release leases on shutdown: %s", reason(e))
        if self.arbiter is not None:
            try:
                await asyncio.wait_for(self.arbiter.stop(), timeout=5.0)
            except Exception as e:
                log.warning("could not stop the arbiter loop: %s", reason(e))

    # -- the Python handle methods ----------------------------------------------------------------
    # `api_key`: the same key as the HTTP API's Bearer token, checked the same way (AuthError,
    # Forbidden, QuotaExceeded, JobNotFound for another key's job). Each starts the loops if nothing
    # has yet: a router that only ever sees cancels or replays must still run its dispatcher.

    async def submit(self, app_id: str, params: dict[str, Any] | None = None, priority: int = 0,
                     idempotency_key: str | None = None, *, api_key: str | None = None, webhook: str | None = None,
                     webhook_events_filter: list[str] | None = None) -> dict[str, Any]:
        self.start()
        caller = await self.auth.caller(api_key)
        job, _ = await self.jobs.submit(app_id, params or {}, priority, idempotency_key, caller, webhook=webhook,
                                        webhook_events=webhook_events_filter)
        return self.jobs.to_api(job)

    async def get(self, job_id: str | uuid.UUID, *, api_key: str | None = None) -> dict[str, Any]:
        self.start()
        caller = await self.auth.caller(api_key)
        return self.jobs.to_api(await self.jobs.get(parse_job_id(job_id), caller))

    async def cancel(self, job_id: str | uuid.UUID, *, api_key: str | None = None) -> dict[str, Any]:
        self.start()
        caller = await self.auth.caller(api_key)
        return self.jobs.to_api(await self.jobs.cancel(parse_job_id(job_id), caller))

    async def wait(self, job_id: str | uuid.UUID, timeout_s: float = 600.0, *,
                   api_key: str | None = None) -> dict[str, Any]:
        """Block until the job is terminal (or timeout_s passes) and return it."""
        self.start()
        caller = await self.auth.caller(api_key)
        return self.jobs.to_api(await self.jobs.wait(parse_job_id(job_id), timeout_s, caller=caller))
