"""The router deployment: composes the job service, the dispatcher and the arbiter loop over
Postgres and Redis, serves the FastAPI app (gpu_orchestrator.api) and offers the Python handle
methods (submit, get, cancel, wait).

`Router` is undecorated; `RouterIngress` is it with a late-bound ingress (Serve calls
`__serve_build_asgi_app__` on the replica after `__init__`), and gpu_orchestrator.serve.app wraps
that with serve.deployment(...) options from the config.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import Any

from fastapi import FastAPI

from gpu_orchestrator.api.app import create_app
from gpu_orchestrator.api.limits import Limits
from gpu_orchestrator import logs
from gpu_orchestrator.artifacts import ArtifactStore
from gpu_orchestrator.bus.events import AsyncEventBus, reason
from gpu_orchestrator.bus.workers import WorkerBeats
from gpu_orchestrator.core.config import OrchestratorConfig, parse_config
from gpu_orchestrator.core.jobs import Job, JobStatus
from gpu_orchestrator.serve.backend import ServeBackend
from gpu_orchestrator.serve.cluster import RayClusterView
from gpu_orchestrator.serve.context import app_name, replica_id
from gpu_orchestrator.serve.metrics import ServeMetrics
from gpu_orchestrator.service.cloud.backend import build_cloud
from gpu_orchestrator.service.dispatcher import Dispatcher
from gpu_orchestrator.service.fleet import Fleet, load_failures
from gpu_orchestrator.service.jobs import JobService, parse_job_id
from gpu_orchestrator.service.auth import Auth, KeyCache
from gpu_orchestrator.service.reports import Reports
from gpu_orchestrator.service.retention import Retention
from gpu_orchestrator.service.transitions import Transitions
from gpu_orchestrator.store.access import KEYS_CHANNEL, PostgresAccess
from gpu_orchestrator.store.postgres import PostgresJobStore

log = logging.getLogger("gpu_orchestrator.router")

GAUGE_INTERVAL_S = 2.0


class Router:
    def __init__(self, config: OrchestratorConfig | dict[str, Any], models: dict[str, Any], database_url: str,
                 redis_url: str, artifacts_url: str | None = None, cloud_providers: dict[str, Any] | None = None):
        self.cfg = config if isinstance(config, OrchestratorConfig) else parse_config(config)
        logs.configure(self.cfg.log_format, component="router")
        rc = self.cfg.router
        self.artifacts = ArtifactStore(artifacts_url) if artifacts_url else None
        self.store = PostgresJobStore.connect(database_url, prepared_statements=rc.prepared_statements)
        # A slow Redis costs a request at most this long (then it is treated as down for a moment).
        self.bus = AsyncEventBus(redis_url, timeout_s=rc.redis_timeout_s)
        # Keyed by model deployment name; what is not here cannot run (JobService refuses its apps).
        self.backends = {name: ServeBackend(handle) for name, handle in models.items()}
        self.metrics = ServeMetrics()
        self.transitions = Transitions(self.bus, self.metrics, timeout_s=rc.redis_timeout_s)
        self.owner = f"router:{replica_id()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.cluster = RayClusterView(app_name())
        self.beats = WorkerBeats(self.bus.r)
        self.arbiter = self._arbiter() if self.cfg.arbiter.enabled else None
        # Cloud backends (Replicate, Modal) for the apps that name one; `cloud_providers`: tests' fakes.
        self.cloud = build_cloud(self.cfg, self.artifacts, cloud_providers)
        self._load_failures: dict[str, str] = {}  # model -> load error, from the replicas' heartbeats
        self.dispatcher = Dispatcher(
            cfg=self.cfg, store=self.store, transitions=self.transitions, backends=self.backends, owner=self.owner,
            gate=self.arbiter.dispatchable if self.arbiter else None,
            refuse=self.arbiter.unplaceable if self.arbiter else None,
            cloud=self.cloud, failing=self._load_failures.get,
        )
        self.jobs = JobService(
            cfg=self.cfg, store=self.store, events=self.bus, transitions=self.transitions, deployed=self.backends,
            artifacts=self.artifacts, on_submitted=self._submitted, cancel_local=self.dispatcher.cancel_local,
            flag_timeout_s=rc.redis_timeout_s, routing=self.dispatcher.routing, cancel_cloud=self.dispatcher.cancel_detached,
            runner=self.dispatcher,
        )
        arbiter = self.arbiter
        self.fleet = Fleet(self.cfg, self.store, heartbeats=self.beats.read_all,
                           replica_states=self.cluster.replica_states,
                           snapshot=(lambda: arbiter.snapshot) if arbiter is not None else None,
                           cloud=self.dispatcher.routing.unavailable)
        # Terminal jobs older than router.retention_days go, with their artifacts and streams.
        self.retention = Retention(store=self.store, artifacts=self.artifacts, streams=self.bus,
                                   retention_days=rc.retention_days, batch=rc.prune_batch, interval_s=rc.prune_interval_s)
        # API keys: required unless router.auth is off (build_app resolves auto by the HTTP host).
        # Keys cached while a LISTEN hears every revoke (on any replica, or the CLI) the moment it commits.
        self.key_cache = KeyCache()
        self.store.listen(KEYS_CHANNEL, self.key_cache.forget, self.key_cache.set_live)
        self.auth = Auth(PostgresAccess(self.store.engine), required=rc.auth != "off", cache=self.key_cache)
        self.api: FastAPI | None = None  # built by __serve_build_asgi_app__
        self._started = False
        self._gauge: asyncio.Task | None = None
        try:
            asyncio.get_running_loop()
            self._ensure_started()
        except RuntimeError:
            pass  # no loop yet: started on the first submit or handle call

    def _arbiter(self) -> Any:
        from gpu_orchestrator.bus.decisions import RedisDecisionBoard
        from gpu_orchestrator.service.arbiter.loop import LEADER_LOCK_KEY, ArbiterLoop

        return ArbiterLoop(
            cfg=self.cfg, store=self.store, lock=self.store.leader_lock(LEADER_LOCK_KEY),
            board=RedisDecisionBoard(self.bus.r, app_name()), cluster=self.cluster,
            heartbeats=self.beats, owner=self.owner, metrics=self.metrics,
            on_change=lambda: self.dispatcher.poke(),
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        if self.api is None:
            self.api = create_app(jobs=self.jobs, fleet=self.fleet, artifacts=self.artifacts,
                                  limits=Limits.from_config(self.cfg.router), retention=self.retention,
                                  auth=self.auth, reports=Reports(self.store, self.cfg.costs))
        return self.api

    def _submitted(self, job: Job) -> None:
        self._ensure_started()
        if job.status == JobStatus.queued:  # claimed here at once, no query for apps with work
            self.dispatcher.poke(job.app_id, job.route)

    def _ensure_started(self) -> None:
        if not self._started:
            self._started = True
            self.dispatcher.start()
            self.retention.start()
            if self.arbiter is not None:
                self.arbiter.start()
            self._gauge = asyncio.get_running_loop().create_task(self._gauge_loop())

    async def _gauge_loop(self) -> None:
        watch_loads = any(a.fallback is not None for a in self.cfg.apps)
        while True:
            self.metrics.flush()  # a quiet second's counts too
            self.metrics.set_queues(self.jobs.apps, self.dispatcher.queue_stats)
            if self.arbiter is not None:  # every replica, from the decision it acts on (serve/metrics.py)
                self.metrics.set_arbiter(self.arbiter.snapshot)
            if watch_loads:  # a model failing to load sends its app's jobs to the fallback
                try:
                    failures = load_failures(await self.beats.read_all())
                    self._load_failures.clear()
                    self._load_failures.update(failures)
                except Exception as e:  # heartbeats are in Redis: keep the last view
                    log.debug("heartbeats unavailable: %s", reason(e))
            await asyncio.sleep(GAUGE_INTERVAL_S)

    async def __del__(self) -> None:
        """Serve awaits this when it stops the replica gracefully (rolling update, downscale): the
        leases this router holds go back at once instead of expiring a lease_s later, and the
        arbiter's leader lock too, so another replica leads at once."""
        release = getattr(getattr(self, "dispatcher", None), "release_all", None)
        if release is None:
            return
        gauge = getattr(self, "_gauge", None)  # absent when __init__ failed part-way
        if gauge is not None:
            gauge.cancel()
        if getattr(self, "retention", None) is not None:
            await self.retention.stop()
        try:
            await asyncio.wait_for(release(), timeout=10.0)
        except Exception as e:  # the leases still expire on their own
            log.warning("could not release leases on shutdown: %s", reason(e))
        if getattr(self, "arbiter", None) is not None:
            try:
                await asyncio.wait_for(self.arbiter.stop(), timeout=5.0)
            except Exception as e:
                log.warning("could not stop the arbiter loop: %s", reason(e))

    # -- Python handle methods --------------------------------------------------------------------
    # Each starts the dispatcher (and the arbiter) if nothing has yet: a router outside Serve that
    # only ever sees cancels or replays must still run its dispatcher.

    # `api_key`: the same key as the HTTP API's Bearer token, checked the same way (AuthError,
    # Forbidden, QuotaExceeded, JobNotFound for another key's job).

    async def submit(self, app_id: str, params: dict[str, Any] | None = None, priority: int = 0,
                     idempotency_key: str | None = None, *, api_key: str | None = None) -> dict[str, Any]:
        self._ensure_started()
        caller = await self.auth.caller(api_key)
        job, _ = await self.jobs.submit(app_id, params or {}, priority, idempotency_key, caller)
        return job.to_api()

    async def get(self, job_id: str | uuid.UUID, *, api_key: str | None = None) -> dict[str, Any]:
        self._ensure_started()
        caller = await self.auth.caller(api_key)
        return (await self.jobs.get(parse_job_id(job_id), caller)).to_api()

    async def cancel(self, job_id: str | uuid.UUID, *, api_key: str | None = None) -> dict[str, Any]:
        self._ensure_started()
        caller = await self.auth.caller(api_key)
        return (await self.jobs.cancel(parse_job_id(job_id), caller)).to_api()

    async def wait(self, job_id: str | uuid.UUID, timeout_s: float = 600.0, *,
                   api_key: str | None = None) -> dict[str, Any]:
        """Block until the job is terminal (or timeout_s passes) and return it. Follows the event
        stream, and the job row while Redis is unavailable."""
        self._ensure_started()
        caller = await self.auth.caller(api_key)
        return (await self.jobs.wait(parse_job_id(job_id), timeout_s, caller=caller)).to_api()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve calls this on every router replica; the arbiter leader's targets ride along to the
        application-level autoscaling policy (serve/autoscaling.py)."""
        self._ensure_started()
        if self.arbiter is None:
            return {}
        from gpu_orchestrator.serve import autoscaling

        return autoscaling.encode(self.arbiter.snapshot, self.arbiter.is_leader)

    def owner_id(self) -> str:
        return self.owner

    def pid(self) -> int:
        return os.getpid()


def _ingress() -> type:
    from ray import serve

    return serve.ingress()(Router)


RouterIngress = _ingress()
