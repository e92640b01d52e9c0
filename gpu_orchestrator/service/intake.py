"""Intake: the submit path of JobService (service/jobs.py). Whether an app is runnable here, the
checks of a submit (its scope and app, Idempotency-Key, priority, webhook, params and artifacts), its
route (local or a cloud backend) and the insert, started at once by this replica's dispatcher when
it may (LocalRunner), else announced queued. A mixin of JobService, over its state.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Callable, Container, Protocol

from gpu_orchestrator import logs
from gpu_orchestrator.store.artifacts import ArtifactError
from gpu_orchestrator.core.apps import AppKind, AppSpec, ParamError, ParamsInvalid, text_problem, validate_params
from gpu_orchestrator.core.config import OrchestratorConfig
from gpu_orchestrator.core.keys import OPEN, Caller, Scope
from gpu_orchestrator.core.jobs import (PRIORITY_MAX, PRIORITY_MIN, AppNotRunnable, IdempotencyConflict,
                                        InvalidRequest, Job, JobStatus, UnknownApp, idempotency_key_problem)
from gpu_orchestrator.core.webhooks import EVENTS as WEBHOOK_EVENTS
from gpu_orchestrator.core.webhooks import events_problem
from gpu_orchestrator.service.cloud.routing import CloudRouting
from gpu_orchestrator.service.transitions import Transitions
from gpu_orchestrator.store.base import JobIntake, StartNow

log = logging.getLogger("gpu_orchestrator.jobs")  # the job service's records, one logger


class LocalRunner(Protocol):
    """The dispatcher of this replica, as intake sees it: a job it may start at once goes in
    running (one transaction) and is handed to it, and a caller waiting here hears its outcome
    in process."""

    def start_terms(self, app: AppSpec, route: str | None) -> StartNow | None: ...
    def adopt(self, job: Job) -> None: ...
    def outcome(self, job_id: uuid.UUID) -> "asyncio.Future[Job | None] | None": ...


class ArtifactLookup(Protocol):
    def exists(self, uri: str) -> bool: ...


class Intake:
    # What it uses of the JobService (set there).
    cfg: OrchestratorConfig
    apps: dict[str, AppSpec]
    store: JobIntake
    transitions: Transitions
    deployed: Container[str]
    artifacts: ArtifactLookup | None
    on_submitted: Callable[[Job], None]
    runner: LocalRunner | None
    webhook_problem: Callable[[str], str | None] | None
    routing: CloudRouting

    def runnable_app(self, app_id: Any) -> AppSpec:
        """The app's spec, or a refusal naming app_id: unknown, or nothing here can run it (its jobs
        would otherwise wait forever)."""
        if not isinstance(app_id, str) or not app_id:
            raise InvalidRequest("app_id", "is required (a string)")
        why = text_problem(app_id)
        if why:
            raise InvalidRequest("app_id", why)
        spec = self.apps.get(app_id)
        if spec is None:
            raise UnknownApp("app_id", f"unknown app {app_id[:64]!r} (known: {sorted(self.apps)})")
        if spec.kind != AppKind.local:
            why = self.routing.why_unavailable(spec.kind.value)
            if why:
                raise AppNotRunnable("app_id", f"app {app_id!r} runs on {spec.kind.value}, which is unavailable "
                                     f"here ({why}); its jobs could never run")
            return spec
        if spec.deployment not in self.cfg.models or spec.deployment not in self.deployed:
            raise AppNotRunnable("app_id", f"app {app_id!r} needs model deployment {spec.deployment!r}, which "
                                 f"this orchestrator does not run")
        return spec

    async def submit(self, app_id: Any, params: Any, priority: Any = 0,
                     idempotency_key: str | None = None, caller: Caller = OPEN, webhook: str | None = None,
                     webhook_events: list[str] | None = None) -> tuple[Job, bool]:
        """(job, created): created is False when the Idempotency-Key found an earlier job. The job
        is the caller's; its quota is checked with the insert (QuotaExceeded). `webhook`: a URL
        POSTed the job on `webhook_events` (core/webhooks.py)."""
        caller.require(Scope.submit)
        spec = self.runnable_app(app_id)
        caller.require_app(spec.id)
        if idempotency_key is not None and (why := idempotency_key_problem(idempotency_key)):
            raise InvalidRequest("Idempotency-Key", why)
        stored_key = idempotency_key
        if idempotency_key is not None and caller.owner is not None:
            stored_key = f"{caller.owner}/{idempotency_key}"  # one key's retries never find another key's job
        if isinstance(priority, bool) or not isinstance(priority, int) or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            raise InvalidRequest("priority", f"must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}")
        if webhook is not None or webhook_events is not None:
            await self._check_webhook(webhook, webhook_events)
        clean = validate_params(spec, params)
        if self.routing.needs_fresh_stats(spec):
            self.routing.refresh(spec.id, await asyncio.to_thread(self.store.queue_stats, app_id=spec.id))
        route = self.routing.route(spec, clean)  # ParamsInvalid: a param the cloud-only app's provider does not take
        if spec.has_files:  # the artifact store is files or S3: off the event loop
            await asyncio.to_thread(self._check_artifacts, spec, clean)
        job, created = await self.store.asubmit(
            app_id=spec.id,
            params=clean,
            priority=priority,
            max_attempts=spec.max_attempts,
            timeout_s=spec.timeout_s,
            idempotency_key=stored_key,
            idempotency_ttl_s=self.cfg.router.idempotency_ttl_s,
            max_queued=spec.max_queued,
            route=route.backend,
            route_reason=route.reason or None,
            owner=caller.owner,
            quota=caller.quota or None,
            start=self.runner.start_terms(spec, route.backend) if self.runner is not None else None,
            **({"webhook": webhook, "webhook_events": webhook_events} if webhook is not None else {}),
        )
        if not created and job.app_id != spec.id:  # a key is one request: never another app's job
            raise IdempotencyConflict(spec.id, idempotency_key or "", job.id)
        if created:
            logs.set_job(job.id)  # the rest of this request's records carry it
            log.info("%s for %s (%s)", job.status.value, spec.id, job.route or "local")  # running: started here
            if job.route is None and spec.fallback is not None:
                self.routing.queued_locally(spec.id)
            if job.status == JobStatus.running and self.runner is not None:
                self.runner.adopt(job)  # started by the insert: it runs here, and announces both steps
            else:
                where = {"backend": job.route, "reason": job.route_reason} if job.route else {}
                await self.transitions.announce(job.id, job.app_id, JobStatus.queued, new=True, **where)
            self.on_submitted(job)
        return job, created

    async def _check_webhook(self, url: Any, events: Any) -> None:
        if url is None:
            raise InvalidRequest("webhook", "webhook_events_filter needs a webhook URL")
        if not isinstance(url, str) or (why := text_problem(url)):
            raise InvalidRequest("webhook", why or "must be a URL (a string)")
        if events is not None:
            if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
                raise InvalidRequest("webhook_events_filter", f"must be a list of events: {list(WEBHOOK_EVENTS)}")
            if why := events_problem(events):
                raise InvalidRequest("webhook_events_filter", why)
        if self.webhook_problem is None:
            raise InvalidRequest("webhook", "this router sends no webhooks")
        if why := await asyncio.to_thread(self.webhook_problem, url):  # a DNS lookup: off the loop
            raise InvalidRequest("webhook", why)

    def _check_artifacts(self, spec: AppSpec, params: dict[str, Any]) -> None:
        errors = []
        for p in spec.parameters:
            if p.type == "file" and p.name in params:
                try:
                    if self.artifacts is None or not self.artifacts.exists(params[p.name]):
                        errors.append(ParamError(f"params.{p.name}", f"artifact {params[p.name]} not found"))
                except ArtifactError as e:
                    errors.append(ParamError(f"params.{p.name}", str(e)))
        if errors:
            raise ParamsInvalid(errors)
