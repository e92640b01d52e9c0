"""One Ray instance and one orchestrator application for the whole Serve test session."""

from __future__ import annotations

import copy
import os
import socket
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "orchestrator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_args(database_url: str, redis_url: str) -> dict:
    """serve_config.yaml's args, tuned for tests: two router replicas, short leases, extra apps."""
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args = copy.deepcopy(next(a for a in cfg["applications"] if a["name"] == APP_NAME)["args"])
    args["database_url"], args["redis_url"] = database_url, redis_url
    args["router"].update(num_replicas=2, lease_s=3, poll_interval_s=0.2)
    args["models"]["echo"]["num_replicas"] = 2
    echo = next(a for a in args["apps"] if a["id"] == "echo")
    args["apps"] += [
        dict(copy.deepcopy(echo), id="echo-once", max_attempts=1),
        dict(copy.deepcopy(echo), id="echo-tiny", max_queued=2, max_in_flight=1),
        dict(copy.deepcopy(echo), id="echo-timeout", timeout_s=1, max_attempts=1),
    ]
    return args


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    metrics_port = free_port()
    ray.init(num_cpus=16, include_dashboard=False, configure_logging=False, log_to_driver=False,
             _metrics_export_port=metrics_port)
    yield {"metrics_port": metrics_port}
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def orchestrator(ray_cluster, serve_backend):
    """Deploys the app once; yields its base URL. Each test uses its own job ids, so sharing is safe."""
    from ray import serve

    from serve_apps.orchestrator import build_app

    db = serve_backend.fresh_database()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(test_args(serve_backend.url_for(db), serve_backend.redis_url)), name=APP_NAME, route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base)
    yield base
    serve.delete(APP_NAME)
    serve_backend.drop(db)


def wait_healthy(base: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base}/healthz not healthy after {timeout_s}s")


@pytest.fixture
def http(orchestrator):
    with httpx.Client(base_url=orchestrator, timeout=30) as c:
        yield c


def wait_status(http: httpx.Client, job_id: str, statuses: set[str], timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        r = http.get(f"/v1/jobs/{job_id}")
        if r.status_code == 200 and r.json()["status"] in statuses:
            return r.json()
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not in {statuses} after {timeout_s}s: {r.status_code} {r.text}")
        time.sleep(0.1)
