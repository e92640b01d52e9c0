"""Metrics through ray.serve.metrics, so they show in Ray's Prometheus endpoint: the job counters
(the JobMetrics protocol of service/transitions.py), the queue-depth gauge, and the arbiter's
model loads, evictions and load times."""

from __future__ import annotations

from gpu_orchestrator.core.jobs import JobStatus

LOAD_SECONDS_BOUNDARIES = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]


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
        self.queue_depth = metrics.Gauge("gpu_orch_queue_depth", description="queued jobs per app", tag_keys=tags)
        model = ("model",)
        self.loads_counter = metrics.Counter("gpu_orch_model_loads", description="arbiter scale-ups from zero (swaps in)", tag_keys=model)
        self.evictions_counter = metrics.Counter("gpu_orch_model_evictions", description="arbiter scale-downs to zero (swaps out, idle TTL)", tag_keys=model)
        self.load_histogram = metrics.Histogram(
            "gpu_orch_model_load_seconds", description="time from the arbiter's load decision to a running replica",
            boundaries=LOAD_SECONDS_BOUNDARIES, tag_keys=model,
        )
        self._finished = {JobStatus.succeeded: self.succeeded, JobStatus.failed: self.failed,
                          JobStatus.cancelled: self.cancelled}

    # JobMetrics (service/transitions.py)
    def transition(self, app_id: str, status: JobStatus, *, new: bool = False) -> None:
        status = JobStatus(status)
        self.transitions.inc(tags={"app_id": app_id, "status": status.value})
        if new:
            self.submitted.inc(tags={"app_id": app_id})
        elif status in self._finished:
            self._finished[status].inc(tags={"app_id": app_id})

    def set_queue_depth(self, app_id: str, queued: int) -> None:
        self.queue_depth.set(queued, tags={"app_id": app_id})

    # ArbiterMetrics (service/arbiter_ports.py)
    def loaded(self, model: str) -> None:
        self.loads_counter.inc(tags={"model": model})

    def evicted(self, model: str) -> None:
        self.evictions_counter.inc(tags={"model": model})

    def load_seconds(self, model: str, seconds: float) -> None:
        self.load_histogram.observe(seconds, tags={"model": model})
