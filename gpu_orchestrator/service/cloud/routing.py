"""Which jobs go to the cloud, from what the router knows of the local side (no Ray, no I/O of
its own: the dispatcher feeds it queue stats and service times; the arbiter and the replicas'
heartbeats say what cannot be placed or fails to load).

A new job is routed once, at submit: cloud-only apps to their provider; a local app with a
`fallback` to the cloud when its model can never be placed, fails to load, or (when: busy) the
estimated local wait is over `max_local_wait_s`, unless the estimated cost is over
`max_cost_per_job` or the provider is unavailable. Queued local jobs move to the fallback only
when their model becomes unplaceable or fails to load; jobs running locally never move.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from gpu_orchestrator.core.apps import AppKind, AppSpec, ParamError, ParamsInvalid
from gpu_orchestrator.core.cloud import LOCAL, LocalOutlook, NotTaken, Route, check_inputs, choose, local_wait_s, resolve
from gpu_orchestrator.core.config import OrchestratorConfig
from gpu_orchestrator.core.costs import estimate_cloud_cost
from gpu_orchestrator.store.base import AppQueueStats

Why = Callable[[str], "str | None"]


def _none(_: str) -> None:
    return None


class CloudRouting:
    # The arbiter calls a model unplaceable only while a job of it has waited max_wait_s (a bigger
    # node may join meanwhile). Once it has, new jobs go to the fallback at once for this long
    # instead of each waiting max_wait_s again; after it, the next job checks again.
    UNPLACEABLE_MEMORY_S = 600.0

    def __init__(self, cfg: OrchestratorConfig, unavailable: Mapping[str, str | None], *,
                 refuse: Why = _none, failing: Why = _none, resident: Callable[[str], bool] = lambda m: True):
        self.cfg = cfg
        self.unavailable = dict(unavailable)  # provider -> why not (None: usable); absent: not configured
        self.refuse = refuse  # model -> why no GPU can hold it
        self.failing = failing  # model -> its load error
        self.resident = resident
        self._stats: dict[str, AppQueueStats] = {}
        # Local jobs this replica queued since the stats were read: a burst of submits between two
        # reads must not all see the same short queue.
        self._since: dict[str, int] = {}
        self.service_s: dict[str, float] = {}
        self._unplaceable: dict[str, tuple[str, float]] = {}  # model -> (why, when the arbiter last said so)

    @property
    def stats(self) -> dict[str, AppQueueStats]:
        return self._stats

    @stats.setter
    def stats(self, value: dict[str, AppQueueStats]) -> None:  # a fresh read counts what was queued before it
        self._stats, self._since = value, {}

    def needs_fresh_stats(self, app: AppSpec) -> bool:
        """Whether a new job of `app` is routed on its queue's estimated wait (when: busy). Such a
        submit reads the app's queue first (`refresh`): the periodic read is up to a second old and
        blind to what other router replicas queued since, and the estimate decides where money goes."""
        fb = app.fallback
        return app.kind == AppKind.local and fb is not None and fb.when == "busy" and self.why_unavailable(fb.backend) is None

    def refresh(self, app_id: str, stats: Mapping[str, AppQueueStats]) -> None:
        """One app's queue as just read (counts everything queued before it)."""
        fresh = stats.get(app_id)
        if fresh is None:
            self._stats.pop(app_id, None)
        else:
            self._stats = {**self._stats, app_id: fresh}
        self._since.pop(app_id, None)

    def queued_locally(self, app_id: str) -> None:
        self._since[app_id] = self._since.get(app_id, 0) + 1

    def unplaceable(self, model: str) -> str | None:
        """Why no GPU can hold the model: what the arbiter says now, or said in the last
        UNPLACEABLE_MEMORY_S."""
        why, now = self.refuse(model), time.monotonic()
        if why:
            self._unplaceable[model] = (why, now)
            return why
        seen = self._unplaceable.get(model)
        return seen[0] if seen is not None and now - seen[1] < self.UNPLACEABLE_MEMORY_S else None

    def why_unavailable(self, backend: str) -> str | None:
        if backend not in self.unavailable:
            return f"no {backend} backend is configured"
        return self.unavailable[backend]

    def outlook(self, app: AppSpec) -> LocalOutlook:
        model = self.cfg.models.get(app.deployment)
        if model is None:
            return LocalOutlook(unplaceable=f"model {app.deployment!r} is not configured")
        s = self._stats.get(app.id)
        service = self.service_s.get(app.id) or (app.fallback.service_s if app.fallback else 10.0)
        queued = (s.queued if s else 0) + self._since.get(app.id, 0)
        wait = local_wait_s(queued=queued, running=s.running if s else 0, slots=app.max_in_flight,
                            service_s=service, load_s=model.load_s, resident=self.resident(app.deployment))
        return LocalOutlook(unplaceable=self.unplaceable(app.deployment), failing=self.failing(app.deployment), wait_s=wait)

    def route(self, app: AppSpec, params: dict[str, Any]) -> Route:
        """Where a new job of `app` goes. Cloud-only apps: their provider, their params checked
        against what it takes (ParamsInvalid naming them)."""
        if app.kind != AppKind.local:
            self._check_taken(app, params)
            return Route(app.kind.value, "cloud-only app")
        fb = app.fallback
        if fb is None or fb.when == "never" or self.declines(app, params):
            return LOCAL  # the fallback cannot take this job as asked: it stays local
        return choose(fb, self.outlook(app), available=self.why_unavailable(fb.backend) is None)

    def declines(self, app: AppSpec, params: dict[str, Any]) -> str | None:
        """Why the app's fallback would not take this job (a param its provider does not take, an
        estimate over max_cost_per_job), or None. Checked at submit and before queued jobs move."""
        fb = app.fallback
        assert fb is not None
        try:
            check_inputs(resolve(fb, app.task), params, self._defaults(app))
        except NotTaken as e:
            return f"{fb.backend} does not take " + ", ".join(f"params.{f}" for f in e.fields)
        if fb.max_cost_per_job is not None:
            cost = self.estimate(app, params)
            if cost > fb.max_cost_per_job:
                return f"estimated ${cost:.4f} is over max_cost_per_job ${fb.max_cost_per_job:g}"
        return None

    def estimate(self, app: AppSpec, params: dict[str, Any]) -> float:
        fb = app.fallback
        assert fb is not None
        r = resolve(fb, app.task)
        seconds = self.service_s.get(app.id) or fb.service_s
        return estimate_cloud_cost(fb.backend, r.pricing, fb.gpu, seconds, int(params.get("num_images") or 1),
                                   int(params.get("max_tokens") or 0), self.cfg.costs)

    def _check_taken(self, app: AppSpec, params: dict[str, Any]) -> None:
        assert app.cloud is not None
        try:
            check_inputs(resolve(app.cloud, app.task), params, self._defaults(app))
        except NotTaken as e:
            raise ParamsInvalid([ParamError(f, f"not taken by {app.cloud.backend} {app.cloud.ref}; leave it unset")
                                 for f in e.fields]) from None

    @staticmethod
    def _defaults(app: AppSpec) -> dict[str, Any]:
        return {p.name: p.default for p in app.parameters}
