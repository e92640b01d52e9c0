"""The job state machine, and that the store's guards match it (checked on real Postgres in
tests/integration/test_store.py)."""

from gpu_orchestrator.jobs import TERMINAL, TRANSITIONS, JobStatus, can_transition


def test_terminal_states_have_no_way_out():
    for s in TERMINAL:
        assert TRANSITIONS[s] == frozenset() and s.terminal


def test_arrows():
    assert can_transition(JobStatus.queued, JobStatus.running)
    assert can_transition(JobStatus.running, JobStatus.queued)  # retry / lease rescue
    assert can_transition(JobStatus.running, JobStatus.cancelled)
    assert not can_transition(JobStatus.queued, JobStatus.succeeded)  # must run first
    assert not can_transition(JobStatus.succeeded, JobStatus.failed)
