"""The Grafana dashboard against a live scrape: on the session's stack (the orchestrator on the demo
profile, the arbiter app on its fake 24 GB GPU, Replicate's loopback fake), jobs that succeed, fail,
are cancelled, run in the cloud and make the arbiter load and evict a model; then every metric the
dashboard's queries name (deploy/grafana/gpu-orchestrator.json) must be on Ray's Prometheus endpoint.

Nothing the dashboard charts is left out on this CPU-only stack: the arbiter app's fake GPU gives
model states, loads, evictions, load times and VRAM per GPU; its models hold a GPU share (0.6), so
their local runs cost something. The cloud runs go to the Replicate fake, whose test model has no
price: they count as runs and GPU-seconds on backend "replicate", at $0 (a real price table is
core/costs.py's, covered by tests/unit/test_cloud_core.py)."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_status
from tests.serve.test_arbiter import wait_all_cold
from tests.unit.test_grafana import dashboard_metrics

pytestmark = pytest.mark.serve

SCRAPE_DEADLINE_S = 120  # Ray's metrics agent exports what replicas record every few seconds


def submit(c: httpx.Client, app_id: str, **params) -> str:
    r = c.post("/v1/jobs", json={"app_id": app_id, "params": params})
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def scrape(port: int) -> list:
    """Every sample on Ray's metrics endpoint (names as exported: counters with _total)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def find(samples, name: str, **labels: str) -> list[float]:
    return [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def test_every_metric_the_dashboard_queries_is_on_rays_scrape(ray_cluster, deployed, http, arbiter_url):
    wanted = dashboard_metrics()
    with httpx.Client(base_url=arbiter_url, timeout=30) as arb:
        wait_all_cold(arb)
        # The orchestrator app: a success, a failure (one attempt), a cancel, a cloud run, a 404.
        ok = submit(http, "echo", message="dashboard")
        bad = submit(http, "echo-once", fail_message="dashboard: boom")
        slow = submit(http, "echo", delay_s=30, steps=30)
        cloud = submit(http, "echo-cloud", message="dashboard")
        # The arbiter app: echo-a (16 of gpu0's 24 GB) loads from cold, runs, and its idle TTL (6 s)
        # evicts it again.
        loaded = submit(arb, "a", steps=2)
        assert wait_status(http, ok, {"succeeded", "failed"})["status"] == "succeeded"
        assert wait_status(http, bad, {"succeeded", "failed"})["status"] == "failed"
        assert wait_status(http, cloud, {"succeeded", "failed"})["status"] == "succeeded"
        wait_status(http, slow, {"running"})
        assert http.delete(f"/v1/jobs/{slow}").status_code == 200
        wait_status(http, slow, {"cancelled"})
        assert http.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404  # Ray counts it as an HTTP error
        assert wait_status(arb, loaded, {"succeeded", "failed"}, timeout_s=90)["status"] == "succeeded"

        url_port = ray_cluster["metrics_port"]
        checks = {
            # Ours carry Ray's `application` tag, which the dashboard's variable filters on.
            "queue gauge per app": lambda s: find(s, "ray_gpu_orch_queue_depth", application="orchestrator", app_id="echo"),
            "oldest wait per app": lambda s: find(s, "ray_gpu_orch_queue_oldest_wait_seconds", application="orchestrator",
                                                  app_id="echo"),
            "submit to done, succeeded": lambda s: find(s, "ray_gpu_orch_job_submit_to_done_seconds_count",
                                                        app_id="echo", status="succeeded"),
            "submit to done, failed": lambda s: find(s, "ray_gpu_orch_job_submit_to_done_seconds_count",
                                                     app_id="echo-once", status="failed"),
            "submit to done, cancelled": lambda s: find(s, "ray_gpu_orch_job_submit_to_done_seconds_count",
                                                        app_id="echo", status="cancelled"),
            "a cloud run": lambda s: find(s, "ray_gpu_orch_runs_total", app_id="echo-cloud", backend="replicate",
                                          outcome="succeeded"),
            "a cloud run's GPU-seconds": lambda s: [v for v in find(s, "ray_gpu_orch_gpu_seconds_total", app_id="echo-cloud",
                                                                    backend="replicate") if v > 0],
            "a local run's cost": lambda s: [v for v in find(s, "ray_gpu_orch_cost_usd_total", application="arbiter",
                                                             app_id="a", backend="local") if v > 0],
            "gpu0's budget": lambda s: [v for v in find(s, "ray_gpu_orch_gpu_vram_budget_gb", application="arbiter",
                                                        gpu="gpu0") if v == 24],
            "echo-a's state": lambda s: find(s, "ray_gpu_orch_model_state", application="arbiter", model="echo-a",
                                             state="resident"),
            "echo-a's eviction": lambda s: find(s, "ray_gpu_orch_model_evictions_total", application="arbiter",
                                                model="echo-a"),
            "echo-a's load time": lambda s: find(s, "ray_gpu_orch_model_load_seconds_count", application="arbiter",
                                                 model="echo-a"),
        }
        deadline = time.monotonic() + SCRAPE_DEADLINE_S
        while True:
            samples = scrape(url_port)
            names = {s.name for s in samples}
            missing = sorted(wanted - names)
            failing = [what for what, check in checks.items() if not check(samples)]
            if not missing and not failing:
                break
            assert time.monotonic() < deadline, (
                f"after {SCRAPE_DEADLINE_S} s, metrics the dashboard queries are not on the scrape: {missing}; "
                f"samples not seen: {failing}")
            time.sleep(2)
        # The arbiter app is left as found: echo-a evicted again (its idle TTL), nothing queued.
        wait_all_cold(arb)
    held = find(samples, "ray_gpu_orch_gpu_vram_held_gb", application="arbiter", gpu="gpu0")
    assert held and all(0 <= v <= 24 for v in held)
