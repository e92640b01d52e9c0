"""Outages on the embedded default: Redis, Postgres, the router replica and the model replica
SIGKILLed mid-run (and the services restarted), while a client keeps submitting with its own
Idempotency-Keys and SSE clients follow their jobs. Every accepted job ends in exactly one terminal
state; none is lost; an outage of Redis or Postgres fails none."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.ray_session import ROOT, wait_healthy

sys.path.insert(0, str(ROOT))
from bench.faults import kill_postgres, kill_redis, kill_replicas, run_scenario  # noqa: E402

pytestmark = pytest.mark.serve


@pytest.fixture
def outage(outage_url, outage_services):
    base = outage_url
    wait_healthy(base, timeout_s=120)
    run_log: Path = outage_services["dirs"]["run_log"]
    run_log.write_text("")
    yield base, outage_services["dirs"]
    wait_healthy(base, timeout_s=120)  # leave the app healthy for the next test


def check(rep, *, may_rerun: bool) -> None:
    assert not [e for e in rep.errors if e.startswith("fault")], rep.errors  # the fault really happened
    assert rep.accepted == 40, rep.errors
    assert rep.lost == 0, rep.errors
    assert rep.failed == 0, rep.errors
    assert rep.succeeded == rep.accepted
    # Each SSE client saw its job's terminal status, exactly once, whatever was killed.
    assert rep.sse_terminal == rep.sse_clients and rep.sse_multi_terminal == 0, rep
    if not may_rerun:
        assert rep.reran == 0, f"{rep.reran} jobs ran twice on the model"
    print(rep.row())


@pytest.mark.timeout(600)
def test_redis_killed_and_restarted_fails_no_job(outage):
    base, dirs = outage
    rep = run_scenario(base, "redis", lambda: kill_redis(dirs["redis"], down_s=3), run_log=dirs["run_log"],
                       n=40, fault_after=12, timeout_s=240)
    check(rep, may_rerun=False)  # Redis carries events only: nothing is re-run for its outage


@pytest.mark.timeout(600)
def test_postgres_killed_and_restarted_loses_no_job(outage):
    base, dirs = outage
    rep = run_scenario(base, "postgres", lambda: kill_postgres(dirs["pg"], down_s=5), run_log=dirs["run_log"],
                       n=40, fault_after=12, timeout_s=300)
    check(rep, may_rerun=True)


@pytest.mark.timeout(600)
def test_router_killed_loses_no_job(outage):
    base, dirs = outage
    rep = run_scenario(base, "router", lambda: kill_replicas("outage", "router"), run_log=dirs["run_log"],
                       n=40, fault_after=12, timeout_s=300)
    check(rep, may_rerun=False)
    # The jobs it held were sent again after the lease, at no attempt's cost; the echo replica that
    # was still running them (or had just finished) handed over the run instead of starting again.
    assert rep.resent >= 1, "the router held no job when it died: the fault tested nothing"
    assert all(j["attempts"] == 1 for j in rep.jobs.values())
