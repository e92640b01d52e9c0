"""Metrics through ray.serve.metrics, so they show in Ray's Prometheus endpoint (each name prefixed
`ray_`, counters suffixed `_total`, histograms as `_bucket`/`_sum`/`_count`; Ray adds its own tags:
application, deployment, replica, ...). docs/operations.md#dashboards lists them all; the Grafana
dashboard in deploy/grafana/ charts them.

- the job counters and the submit-to-done histogram (the JobMetrics protocol of
  service/transitions.py), and runs with their cost by where they ran (local or a cloud backend);
- gauges the router sets every few seconds (_gauge_loop): each app's queue depth and oldest wait,
  and from the arbiter's latest decision each model's state and each GPU's VRAM held and budget.
  Every router replica sets them, leader or not, to the same values (service/gauges.py): aggregate
  them with max(), never sum();
- the arbiter's model loads, evictions and load times (ArbiterMetrics, counted by the leader).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Mapping

from gpu_orchestrator.core.jobs import JobStatus
from gpu_orchestrator.service import gauges

log = logging.getLogger("gpu_orchestrator.metrics")

LOAD_SECONDS_BOUNDARIES = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]
# Submit to done: sub-second echo jobs up to hour-long backlogs.
DONE_SECONDS_BOUNDARIES = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200]


class ServeMetrics:
    def __init__(self) -> None:
        from ray.serve import metrics

        tags = ("app_id",)
        self.submitted = metrics.Counter("gpu_orch_jobs_submitted", description="jobs accepted", tag_keys=tags)
        self.succeeded = metrics.Counter("gpu_orch_jobs_succeeded", description="jobs succeeded", tag_keys=tags)
        self.failed = metrics.Counter("gpu_orch_jobs_failed", description="jobs failed", tag_keys=tags)
        self.cancelled = metrics.Counter("gpu_orch_jobs_cancelled", description="jobs cancelled", tag_keys=tags)
        self.transitions = metrics.Counter("gpu_orch_job_transitions", description="committed job transitions, by "
                                           "the status entered", tag_keys=("app_id", "status"))
        self.done_histogram = metrics.Histogram(
            "gpu_orch_job_submit_to_done_seconds", description="a job's time from submit to its terminal status "
            "(created_at to finished_at), by the status it ended in", boundaries=DONE_SECONDS_BOUNDARIES,
            tag_keys=("app_id", "status"),
        )
        runs = ("app_id", "backend")
        self.runs = metrics.Counter("gpu_orch_runs", description="runs (attempts) whose outcome was recorded, by "
                                    "where they ran (local or the cloud backend) and how they ended",
                                    tag_keys=(*runs, "outcome"))
        self.cost_usd = metrics.Counter("gpu_orch_cost_usd", description="what runs cost, in US dollars (local: GPU "
                                        "share x the GPU's rate; cloud: the provider's billed time x price)", tag_keys=runs)
        self.gpu_seconds = metrics.Counter("gpu_orch_gpu_seconds", description="GPU-seconds runs used (local: wall "
                                           "time x GPU share; cloud: the provider's billed time)", tag_keys=runs)
        self.queue_depth = metrics.Gauge("gpu_orch_queue_depth", description="queued jobs per app (local queue)",
                                         tag_keys=tags)
        self.oldest_wait = metrics.Gauge("gpu_orch_queue_oldest_wait_seconds", description="how long the oldest "
                                         "queued job of the app has waited (local queue; 0 when empty)", tag_keys=tags)
        model = ("model",)
        self.model_state = metrics.Gauge("gpu_orch_model_state", description="1 for the arbiter state the model "
                                         "is in (cold, warm, loading, resident, draining, stopping), 0 for the others",
                                         tag_keys=("model", "state"))
        self.vram_held = metrics.Gauge("gpu_orch_gpu_vram_held_gb", description="VRAM held on the GPU pool: the "
                                       "packed VRAM (declared, or the measured peak with a margin) of every replica "
                                       "placed there (resident, loading, stopping)",
                                       tag_keys=("gpu",))
        self.vram_budget = metrics.Gauge("gpu_orch_gpu_vram_budget_gb", description="the GPU pool's VRAM budget "
                                         "(declared arbiter.gpus, or the node's vram_gb resource)", tag_keys=("gpu",))
        # source: warm (a parked replica woke from host memory: a warm hit) or cold (from disk).
        self.loads_counter = metrics.Counter("gpu_orch_model_loads", description="arbiter scale-ups from zero (swaps "
                                             "in), by source: warm (from host memory) or cold", tag_keys=("model", "source"))
        self.evictions_counter = metrics.Counter("gpu_orch_model_evictions", description="arbiter scale-downs to zero (swaps out, idle TTL)", tag_keys=model)
        self.load_histogram = metrics.Histogram(
            "gpu_orch_model_load_seconds", description="time from the arbiter's load decision to a running replica "
            "(cold) or to a parked replica's answer that it woke (warm)",
            boundaries=LOAD_SECONDS_BOUNDARIES, tag_keys=("model", "source"),
        )
        self.host_held = metrics.Gauge("gpu_orch_host_warm_held_gb", description="host memory the parked (warm) "
                                       "models of the node hold", tag_keys=("node",))
        self.host_budget = metrics.Gauge("gpu_orch_host_warm_budget_gb", description="the warm tier's host memory "
                                         "budget on the node", tag_keys=("node",))
        self._finished = {JobStatus.succeeded: self.succeeded, JobStatus.failed: self.failed,
                          JobStatus.cancelled: self.cancelled}
        self._pending: dict[tuple[Any, tuple[tuple[str, str], ...]], float] = {}
        self._flushed_at = time.monotonic()

    # Counter increments add up here and reach Ray at most once a second (and on every gauge tick):
    # a job makes six or more, each a call into Ray's core worker, on the job path. Ray exports
    # metrics on an interval of its own, so a second's delay changes nothing a scrape sees.
    FLUSH_EVERY_S = 1.0

    def _inc(self, counter: Any, value: float, **tags: str) -> None:
        key = (counter, tuple(sorted(tags.items())))
        self._pending[key] = self._pending.get(key, 0.0) + value
        if time.monotonic() - self._flushed_at >= self.FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Hand the counted increments to Ray."""
        self._flushed_at = time.monotonic()
        pending, self._pending = self._pending, {}
        for (counter, tags), value in pending.items():
            counter.inc(value, tags=dict(tags))

    # JobMetrics (service/transitions.py)
    def transition(self, app_id: str, status: JobStatus, *, new: bool = False,
                   seconds: float | None = None) -> None:
        status = JobStatus(status)
        self._inc(self.transitions, 1, app_id=app_id, status=status.value)
        if new:
            self._inc(self.submitted, 1, app_id=app_id)
        elif status in self._finished:
            self._inc(self._finished[status], 1, app_id=app_id)
        if seconds is not None and status.terminal:
            self.done_histogram.observe(seconds, tags={"app_id": app_id, "status": status.value})

    def ran(self, app_id: str, backend: str, outcome: JobStatus, *, usd: float = 0.0,
            gpu_seconds: float = 0.0) -> None:
        self._inc(self.runs, 1, app_id=app_id, backend=backend, outcome=JobStatus(outcome).value)
        # Ray's counters take positive increments only: a free run adds nothing.
        if usd > 0:
            self._inc(self.cost_usd, usd, app_id=app_id, backend=backend)
        if gpu_seconds > 0:
            self._inc(self.gpu_seconds, gpu_seconds, app_id=app_id, backend=backend)

    # The router's gauges (root/orchestrator.py _gauge_loop)
    def set_queues(self, apps: Iterable[str], stats: Mapping[str, Any]) -> None:
        """Every app's queue depth and oldest wait, from the dispatcher's latest queue stats."""
        for app_id, (queued, oldest_s) in gauges.queue_readings(apps, stats).items():
            self.queue_depth.set(queued, tags={"app_id": app_id})
            self.oldest_wait.set(oldest_s, tags={"app_id": app_id})

    def set_arbiter(self, snapshot: Any) -> None:
        """Model states and GPU VRAM from the arbiter's latest decision (a bus.decisions.Snapshot, or
        None before the first one: nothing to set). Never raises: the gauge loop must go on."""
        if snapshot is None:
            return
        try:
            for model, states in gauges.model_state_readings(snapshot.models).items():
                for state, value in states.items():
                    self.model_state.set(value, tags={"model": model, "state": state})
            for gpu, (held, budget) in gauges.gpu_vram_readings(getattr(snapshot, "gpus", None) or {}).items():
                self.vram_held.set(held, tags={"gpu": gpu})
                self.vram_budget.set(budget, tags={"gpu": gpu})
            for node, h in (getattr(snapshot, "hosts", None) or {}).items():
                self.host_held.set(h.get("held_gb") or 0.0, tags={"node": node})
                self.host_budget.set(h.get("budget_gb") or 0.0, tags={"node": node})
        except Exception as e:
            log.warning("arbiter gauges not set: %s", e)

    # ArbiterMetrics (service/arbiter/ports.py)
    def loaded(self, model: str, warm: bool = False) -> None:
        self.loads_counter.inc(tags={"model": model, "source": "warm" if warm else "cold"})

    def evicted(self, model: str) -> None:
        self.evictions_counter.inc(tags={"model": model})

    def load_seconds(self, model: str, seconds: float, warm: bool = False) -> None:
        self.load_histogram.observe(seconds, tags={"model": model, "source": "warm" if warm else "cold"})
