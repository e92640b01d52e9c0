"""The job state machine, and that the store's guards match it (checked on real Postgres in
tests/integration/test_store.py)."""

import datetime as dt
import uuid

import gpu_orchestrator.core.jobs as jobs_module
from gpu_orchestrator.core.jobs import (TERMINAL, TRANSITIONS, Job, JobStatus, RetryPolicy, can_transition,
                                   request_fingerprint)


def test_terminal_states_have_no_way_out():
    for s in TERMINAL:
        assert TRANSITIONS[s] == frozenset() and s.terminal


def test_arrows():
    assert can_transition(JobStatus.queued, JobStatus.running)
    assert can_transition(JobStatus.running, JobStatus.queued)  # retry / lease rescue
    assert can_transition(JobStatus.running, JobStatus.cancelled)
    assert not can_transition(JobStatus.queued, JobStatus.succeeded)  # must run first
    assert not can_transition(JobStatus.succeeded, JobStatus.failed)


def test_queued_can_fail_without_running():
    # An app that can never run here (unplaceable, removed from the config) fails its queued jobs.
    assert can_transition(JobStatus.queued, JobStatus.failed)
    assert "queued  --fail-->   failed" in jobs_module.__doc__


def test_terminal_is_one_definition():
    assert TERMINAL == {s for s in JobStatus if s.terminal}
    assert {s.value for s in TERMINAL} == {"succeeded", "failed", "cancelled"}


def test_request_fingerprint_is_canonical():
    a = request_fingerprint({"x": 1, "y": {"b": 2, "a": [1, "é"]}}, 0)
    assert a == request_fingerprint({"y": {"a": [1, "é"], "b": 2}, "x": 1}, 0)
    assert a != request_fingerprint({"x": 1, "y": {"b": 2, "a": [1, "é"]}}, 1)  # priority is part of it
    assert a != request_fingerprint({"x": 2, "y": {"b": 2, "a": [1, "é"]}}, 0)


def test_retry_delay_grows_is_capped_and_jittered():
    p = RetryPolicy(backoff_s=2.0, backoff_max_s=10.0)
    assert [p.delay_s(n, rand=1.0) for n in (1, 2, 3, 4, 5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert p.delay_s(1, rand=0.0) == 1.0  # jitter keeps at least half the delay
    assert all(1.0 <= p.delay_s(1) <= 2.0 for _ in range(100))
    assert RetryPolicy(backoff_s=0.0).delay_s(3) == 0.0


def test_job_api_shows_the_error_history():
    now = dt.datetime.now(dt.timezone.utc)
    job = Job(id=uuid.uuid4(), app_id="a", status=JobStatus.queued, priority=0, params={}, result=None,
              error="RuntimeError: boom", attempts=1, max_attempts=3, timeout_s=60.0, backend=None,
              idempotency_key=None, lease_owner=None, lease_expires_at=None, created_at=now, started_at=now,
              finished_at=None, claims=2, lost_attempts=1, run_after=now,
              errors=({"attempt": 1, "error": "lease expired", "at": now.isoformat(), "kind": "lost"},
                      {"attempt": 2, "error": "RuntimeError: boom", "at": now.isoformat(), "kind": "error"}))
    api = job.to_api()
    assert [e["kind"] for e in api["errors"]] == ["lost", "error"]
    assert api["lost_attempts"] == 1 and api["retry_at"] == now.isoformat() and api["error"] == "RuntimeError: boom"
