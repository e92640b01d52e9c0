"""Retention end to end on a running router (real Postgres, Redis and artifact store): `gpu-orch
prune` deletes finished jobs past the age with the files their params and results name and their
event streams; queued, running and younger jobs stay; bad ages are refused naming the option."""

from __future__ import annotations

import redis
import sqlalchemy as sa
from click.testing import CliRunner

from gpu_orchestrator.bus.events import stream_key
from gpu_orchestrator.cli import cli

from tests.helpers import wait_terminal
from .router_harness import db_url, http, rr  # noqa: F401 (fixtures)


def backdate_finished(rr, job_id: str, days: float) -> None:
    with rr.router.store.engine.begin() as c:
        c.execute(sa.text("UPDATE jobs SET finished_at = finished_at - make_interval(days => :d) WHERE id = :id"),
                  {"id": job_id, "d": days})


def prune(rr, *args: str, input: str | None = None):
    r = CliRunner().invoke(cli, ["--url", rr.base, "prune", *args], input=input)
    return r.exit_code, r.output


def test_gpu_orch_prune_deletes_old_jobs_with_their_artifacts_and_streams(rr, http, serve_backend):
    uri = http.post("/v1/artifacts", files={"file": ("a.wav", b"RIFF....WAVEfmt ")}).json()["artifact"]
    old = http.post("/v1/jobs", json={"app_id": "transcribe", "params": {"audio": uri}}).json()["job_id"]
    assert wait_terminal(http, old)["result"]["echo"]["audio"] == uri  # params and result both name it
    young = http.post("/v1/jobs", json={"app_id": "echo"}).json()["job_id"]
    wait_terminal(http, young)
    queued = http.post("/v1/jobs", json={"app_id": "echo", "params": {"delay_s": 30}}).json()["job_id"]
    backdate_finished(rr, old, 40)
    r = redis.Redis.from_url(serve_backend.redis_url)
    assert r.exists(stream_key(old))

    code, out = prune(rr, "--older-than", "30d", "--dry-run")
    assert code == 0 and "would delete 1 job(s) finished more than 30 days ago" in out and "transcribe" in out, out
    assert http.get(f"/v1/jobs/{old}").status_code == 200

    code, out = prune(rr, "--older-than", "30d", input="n\n")  # asks first, shows what would go
    assert code == 1 and "would delete 1 job(s)" in out and "Delete these 1 job(s)" in out and "Aborted" in out, out
    assert http.get(f"/v1/jobs/{old}").status_code == 200
    code, out = prune(rr, "--older-than", "30d", input="y\n")
    assert code == 0 and "deleted 1 job(s)" in out and "1 artifact(s)" in out and "1 event-stream key(s)" in out, out  # no cancel flag was ever set
    assert http.get(f"/v1/jobs/{old}").status_code == 404
    assert http.get("/v1/artifacts/" + uri.removeprefix("artifact://")).status_code == 404
    assert not r.exists(stream_key(old))
    assert http.get(f"/v1/jobs/{young}").json()["status"] == "succeeded" and r.exists(stream_key(young))
    assert http.get(f"/v1/jobs/{queued}").json()["status"] in ("queued", "running")
    code, out = prune(rr)  # the stack's own retention_days (30); nothing to go, nothing asked
    assert code == 0 and "would delete 0 job(s) finished more than 30 days ago" in out and "Delete" not in out, out
    http.delete(f"/v1/jobs/{queued}")


def test_bad_ages_are_refused_naming_the_option(rr, http):
    for bad in ("0d", "-3d", "soon", "12y", "inf", "nan", "1e3d"):
        code, out = prune(rr, "--older-than", bad)
        assert code == 2 and "--older-than" in out and "30d" in out, (bad, out)
    for ambiguous in ("6m", "6mo"):  # minutes or months: refused, not guessed
        code, out = prune(rr, "--older-than", ambiguous)
        assert code == 2 and "minutes or months" in out and "6min" in out, (ambiguous, out)
    code, out = prune(rr, "--older-than", "90min", "--dry-run")
    assert code == 0 and "more than 0.0625 days ago" in out, out
    for body, field in (({"older_than_days": 0}, "older_than_days"), ({"dry_run": "maybe"}, "dry_run"),
                        ({"older_than": 3}, "older_than")):
        resp = http.post("/v1/admin/prune", json=body)
        assert resp.status_code == 422 and field in resp.text, (body, resp.text)
