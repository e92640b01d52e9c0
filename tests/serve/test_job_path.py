"""The job path end to end on a real Ray Serve instance with real Postgres and Redis."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from tests.helpers import read_sse, wait_replicas_idle, wait_status
from tests.ray_session import APP_NAME

pytestmark = pytest.mark.serve


def submit(http, app_id="echo", expect=202, **params):
    r = http.post("/v1/jobs", json={"app_id": app_id, "params": params})
    assert r.status_code == expect, r.text
    return r.json()["job_id"]




def test_http_submit_runs_to_success_with_progress_events(orchestrator, http):
    job_id = submit(http, message="hello world", steps=3, delay_s=0.3)
    events = read_sse(orchestrator, job_id)
    kinds = [(e["event"], e["data"].get("status") or e["data"].get("step")) for e in events]
    assert kinds[0] == ("status", "queued")
    assert ("status", "running") in kinds
    assert [e["data"]["step"] for e in events if e["event"] == "progress"] == [1, 2, 3]
    assert kinds[-1] == ("status", "succeeded")
    assert events[-1]["data"]["result"]["echo"]["message"] == "hello world"
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert job["result"]["synthetic"] is True and job["result"]["echo"] == {"message": "hello world", "steps": 3, "delay_s": 0.3}
    assert job["attempts"] == 1 and job["backend"] == "local:echo" and job["error"] is None
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]


def test_event_stream_resumes_after_last_event_id(orchestrator, http):
    job_id = submit(http, steps=4, delay_s=0.2)
    full = read_sse(orchestrator, job_id)
    cut = full[2]["id"]
    resumed = read_sse(orchestrator, job_id, last_event_id=cut)
    assert [e["id"] for e in resumed] == [e["id"] for e in full[3:]]


def test_python_handle_submit_get_wait_cancel(orchestrator):
    from ray import serve

    h = serve.get_app_handle(APP_NAME)
    job = h.submit.remote("echo", {"message": "from python", "steps": 2}).result()
    assert job["status"] in ("queued", "running")  # running: started in its insert (a slot was free)
    done = h.wait.remote(job["job_id"], 60).result()
    assert done["status"] == "succeeded" and done["result"]["echo"]["message"] == "from python"
    assert h.get.remote(job["job_id"]).result()["status"] == "succeeded"
    slow = h.submit.remote("echo", {"delay_s": 30, "steps": 30}).result()
    assert h.cancel.remote(slow["job_id"]).result()["status"] == "cancelled"
    with pytest.raises(Exception, match="not a UUID"):
        h.get.remote("nope").result()


def test_seed_compatible_aliases(http):
    r = http.post("/submit", json={"app_id": "echo", "params": {"message": "seed", "steps": "2"}})
    assert r.status_code == 202 and set(r.json()) == {"job_id", "status"}
    job = wait_status(http, r.json()["job_id"], {"succeeded"})
    assert job["params"]["steps"] == 2  # the seed's numeric strings are coerced
    s = http.get(f"/status/{job['job_id']}").json()
    assert s["status"] == "succeeded" and s["result"]["echo"]["message"] == "seed"
    w = http.get("/workers").json()
    assert w["count"] == len(w["workers"]) >= 1
    assert {"worker_id", "app_id", "status", "last_heartbeat"} <= set(w["workers"][0])


def test_apps_workers_health_docs(http):
    apps = {a["id"]: a for a in http.get("/v1/apps").json()["apps"]}
    assert apps["echo"]["synthetic"] is True
    assert {p["name"] for p in apps["echo"]["parameters"]} == {"message", "delay_s", "steps", "fail_message"}
    models = {m["deployment"]: m for m in http.get("/v1/workers").json()["models"]}
    echo = models["echo"]
    assert echo["synthetic"] is True and "echo" in echo["apps"]
    assert echo["replica_states"].get("RUNNING") == 2
    assert len(echo["replicas"]) == 2 and all(r["state"] in ("resident", "busy") for r in echo["replicas"])
    assert all(r["load_time_s"] is not None for r in echo["replicas"])
    assert http.get("/healthz").json() == {"status": "ok", "database": "ok", "redis": "ok"}
    assert "/v1/jobs" in http.get("/openapi.json").json()["paths"]
    assert http.get("/docs").status_code == 200


def test_list_jobs_filters_and_cursor(http):
    ids = [submit(http, app_id="echo", message=f"m{i}") for i in range(3)]
    for i in ids:
        wait_status(http, i, {"succeeded"})
    page = http.get("/v1/jobs", params={"app_id": "echo", "status": "succeeded", "limit": 2}).json()
    assert len(page["jobs"]) == 2 and page["next_cursor"]
    nxt = http.get("/v1/jobs", params={"app_id": "echo", "limit": 2, "cursor": page["next_cursor"]}).json()
    assert not {j["job_id"] for j in page["jobs"]} & {j["job_id"] for j in nxt["jobs"]}
    assert http.get("/v1/jobs", params={"status": "bogus"}).status_code == 422


def test_idempotency_key(http):
    key = f"k-{uuid.uuid4()}"
    a = http.post("/v1/jobs", json={"app_id": "echo", "params": {}}, headers={"Idempotency-Key": key})
    again = http.post("/v1/jobs", json={"app_id": "echo", "params": {}}, headers={"Idempotency-Key": key})
    assert a.status_code == 202 and again.status_code == 200
    assert a.json()["job_id"] == again.json()["job_id"]
    # The same key with another body is a client bug, not a retry: 409, and the old job is untouched.
    other = http.post("/v1/jobs", json={"app_id": "echo", "params": {"message": "other"}}, headers={"Idempotency-Key": key})
    assert other.status_code == 409 and other.json()["error"] == "idempotency_conflict", other.text
    assert "Idempotency-Key" in other.json()["message"]
    # Keys are scoped per app: the same key for another app is a new job.
    b = http.post("/v1/jobs", json={"app_id": "echo-once", "params": {}}, headers={"Idempotency-Key": key})
    assert b.status_code == 202 and b.json()["job_id"] != a.json()["job_id"]


def _count_jobs(http) -> int:
    n, cursor = 0, None
    while True:
        page = http.get("/v1/jobs", params={"limit": 500, **({"cursor": cursor} if cursor else {})}).json()
        n += len(page["jobs"])
        cursor = page["next_cursor"]
        if not cursor:
            return n


BAD_SUBMITS = [
    ({"app_id": "nope", "params": {}}, 422, "app_id"),
    ({"app_id": "chat", "params": {}}, 422, "params.messages"),
    ({"app_id": "echo", "params": {"steps": "many"}}, 422, "params.steps"),
    ({"app_id": "echo", "params": {"steps": 0}}, 422, "params.steps"),
    ({"app_id": "echo", "params": {"delay_s": 1e9}}, 422, "params.delay_s"),
    ({"app_id": "echo", "params": {"colour": "red"}}, 422, "params.colour"),
    ({"app_id": "echo", "params": {"message": 5}}, 422, "params.message"),
    ({"params": {}}, 422, "app_id"),
    ({"app_id": "echo", "params": [1, 2]}, 422, "params"),
    ({"app_id": "echo", "params": {}, "priority": 1000}, 422, "priority"),
    ({"app_id": "echo", "params": {}, "extra": 1}, 422, "extra"),
]


@pytest.mark.parametrize("payload,status,field", BAD_SUBMITS, ids=[b[2] + str(i) for i, b in enumerate(BAD_SUBMITS)])
def test_bad_submit_is_4xx_naming_the_field_and_persists_nothing(http, payload, status, field):
    before = _count_jobs(http)
    r = http.post("/v1/jobs", json=payload)
    assert r.status_code == status, r.text
    body = r.json()
    assert field in body["message"] and field in [f["field"] for f in body.get("fields", [])], body
    assert _count_jobs(http) == before


def test_malformed_json_and_oversize_body_and_bad_ids(http):
    before = _count_jobs(http)
    r = http.post("/v1/jobs", content=b'{"app_id": "echo", ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
    big = json.dumps({"app_id": "echo", "params": {"message": "x" * 2_000_000}})
    r = http.post("/v1/jobs", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["message"]
    r = http.get("/v1/jobs/not-a-uuid")
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "job_id"
    r = http.get(f"/v1/jobs/{uuid.uuid4()}")
    assert r.status_code == 404 and "not found" in r.json()["message"]
    assert http.delete(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
    assert http.get(f"/v1/jobs/{uuid.uuid4()}/events").status_code == 404
    assert _count_jobs(http) == before


def test_cancel_finished_job_is_409(http):
    job_id = submit(http)
    wait_status(http, job_id, {"succeeded"})
    r = http.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 409 and "succeeded" in r.json()["message"]
    assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_cancel_running_job_stops_it_on_the_replica(orchestrator, http):
    job_id = submit(http, app_id="echo-solo", steps=40, delay_s=20)
    read_sse(orchestrator, job_id, until=lambda e: e["event"] == "progress")  # a step done
    r = http.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # The replica stopped between steps: it says it has nothing in flight, long before the 20 s.
    wait_replicas_idle(http, "echo-solo", since=time.time(), timeout_s=15)
    events = read_sse(orchestrator, job_id)
    assert events[-1]["data"]["status"] == "cancelled"
    assert 1 <= len([e for e in events if e["event"] == "progress"]) < 40
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["result"] is None


def test_retries_then_fails_with_the_models_error(http):
    job_id = submit(http, fail_message="boom: out of ideas")
    job = wait_status(http, job_id, {"failed"})
    assert job["attempts"] == 3 and job["error"] == "RuntimeError: boom: out of ideas"
    assert job["result"] is None and job["finished_at"]


def test_a_job_larger_than_grpcs_default_message_reaches_the_model_and_its_error_comes_back(orchestrator, http):
    """The router calls models over Serve's gRPC (router.model_calls), and Serve's proxy calls the
    router over it (ops/ingress.py), each with a default cap of 4 MiB a message: params over it must
    reach the model, what the model sends back must reach the router, and the job read over HTTP
    must come back through the proxy (a 500 there once broke the admin page's list of jobs)."""
    from ray import serve

    h = serve.get_app_handle(APP_NAME)
    big = "x" * (5 * 1024 * 1024)  # no HTTP body limit on the Python handle
    job = h.submit.remote("echo", {"fail_message": big}).result()
    done = h.wait.remote(job["job_id"], 60).result()
    assert done["status"] == "failed", done["status"]
    assert done["error"].startswith("RuntimeError: xxxx") and "RESOURCE_EXHAUSTED" not in done["error"], done["error"][:300]
    r = http.get(f"/v1/jobs/{job['job_id']}")
    assert r.status_code == 200, r.text[:300]
    assert r.json()["params"]["fail_message"] == big


def test_queue_limit_answers_429_with_retry_after(http):
    blocker = submit(http, app_id="echo-tiny", delay_s=30, steps=30)
    wait_status(http, blocker, {"running"})
    queued = [submit(http, app_id="echo-tiny") for _ in range(2)]
    r = http.post("/v1/jobs", json={"app_id": "echo-tiny", "params": {}})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "full" in r.json()["message"]
    for j in [blocker, *queued]:
        http.delete(f"/v1/jobs/{j}")


def test_metrics_reach_rays_prometheus_endpoint(ray_cluster, http):
    job_id = submit(http, message="metrics")
    wait_status(http, job_id, {"succeeded"})
    url = f"http://127.0.0.1:{ray_cluster['metrics_port']}/metrics"
    wanted = ("ray_gpu_orch_jobs_submitted_total", "ray_gpu_orch_jobs_succeeded_total", "ray_gpu_orch_queue_depth")
    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(url, timeout=5).text
        lines = [line for line in text.splitlines() if 'app_id="echo"' in line]
        if all(any(line.startswith(w) for line in lines) for w in wanted):
            break
        assert time.monotonic() < deadline, f"gpu_orch metrics missing from {url}"
        time.sleep(1)
    submitted = next(line for line in lines if line.startswith("ray_gpu_orch_jobs_submitted_total"))
    assert float(submitted.rsplit(" ", 1)[1]) >= 1


def test_job_over_its_timeout_fails_and_stops_on_the_replica(orchestrator, http):
    job_id = submit(http, app_id="echo-timeout", delay_s=10, steps=20)
    job = wait_status(http, job_id, {"failed", "succeeded"}, timeout_s=30)
    assert job["status"] == "failed" and job["error"] == "timed out after 1 s"
    wait_replicas_idle(http, "echo-solo", since=time.time(), timeout_s=15)  # the model stopped, well before 10 s
    seen = [e["data"]["step"] for e in read_sse(orchestrator, job_id) if e["event"] == "progress"]
    assert len(seen) < 20


def test_runtime_envs_isolate_conflicting_package_versions(http):
    import importlib.util

    assert importlib.util.find_spec("tabulate") is None  # not in the base install at all
    got = {}
    for app in ("tabulate-old", "tabulate-new"):
        job = wait_status(http, submit(http, app_id=app), {"succeeded", "failed"}, timeout_s=120)
        assert job["status"] == "succeeded", job
        got[app] = job["result"]["packages"]["tabulate"]
    assert got == {"tabulate-old": "0.8.10", "tabulate-new": "0.9.0"}
