"""What only the in-memory store has: a clock the test moves, a simulated outage, leader locks in
one process. (Its behaviour as a JobStore is tested with Postgres' in tests/integration/test_store.py.)"""

from __future__ import annotations

import threading

import pytest

from gpu_orchestrator.core.jobs import JobStatus, RetryPolicy
from gpu_orchestrator.store.base import StoreUnavailable
from gpu_orchestrator.store.memory import ManualClock, MemoryJobStore


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def store(clock):
    return MemoryJobStore(clock=clock)


def claim(store, owner="r1", lease_s=30.0, app="a"):
    return store.claim(app_id=app, owner=owner, limit=10, lease_s=lease_s, max_in_flight=10)


def test_a_lease_expires_when_the_clock_passes_it(store, clock):
    job, _ = store.submit(app_id="a", params={})
    (j,) = claim(store, lease_s=30)
    store.mark_dispatched(job_id=j.id, owner="r1", attempt=1)
    clock.advance(29.9)
    assert store.rescue_expired() == []
    assert store.heartbeat(owner="r1", leases=[(j.id, 1)], lease_s=30) == {(j.id, 1)}
    clock.advance(29.9)  # renewed: 59.8 s after the claim, still held
    assert store.rescue_expired() == []
    clock.advance(0.2)
    (r,) = store.rescue_expired(RetryPolicy(backoff_s=10.0))
    assert r.job_id == job.id and r.lost and r.status == JobStatus.queued
    # A lost run waits for its backoff (5 to 10 s), on the same clock.
    assert claim(store, owner="r2") == []
    clock.advance(10.1)
    assert [j.claims for j in claim(store, owner="r2")] == [2]


def test_a_retry_waits_for_its_delay_on_the_clock(store, clock):
    store.submit(app_id="a", params={})
    (j,) = claim(store)
    after = store.fail_attempt(job_id=j.id, owner="r1", attempt=1, error="boom", retry_delay_s=60)
    assert after.run_after.timestamp() == pytest.approx(clock() + 60, abs=0.01)
    clock.advance(59)
    assert claim(store) == []
    clock.advance(2)
    assert [j.attempts for j in claim(store)] == [2]


def test_time_moves_on_between_calls_even_on_a_stopped_clock(store):
    # As Postgres' now() differs between transactions: creation order is the listed order.
    ids = [store.submit(app_id="a", params={"i": i})[0].id for i in range(20)]
    assert [j.id for j in store.list(limit=50)[0]] == ids[::-1]
    assert [j.id for j in claim(store)] == ids[:10]


def test_returned_jobs_are_values_not_views(store):
    job, _ = store.submit(app_id="a", params={"x": [1]})
    job.params["x"].append(2)  # the caller's copy only
    claim(store)
    assert job.status == JobStatus.queued and job.attempts == 0
    assert store.get(job.id).params == {"x": [1]} and store.get(job.id).status == JobStatus.running


def test_an_outage_raises_a_transient_error_and_keeps_the_jobs(store):
    job, _ = store.submit(app_id="a", params={})
    store.available = False
    for call in (store.ping, lambda: store.get(job.id), lambda: claim(store),
                 lambda: store.submit(app_id="a", params={}), store.rescue_expired):
        with pytest.raises(StoreUnavailable) as e:
            call()
        assert store.is_transient(e.value)  # what the dispatcher asks before retrying a write
    store.available = True
    store.ping()
    assert store.get(job.id).status == JobStatus.queued and len(store.list()[0]) == 1


def test_leader_lock_contention_between_two_routers_sharing_a_store(store):
    a, b, c = store.leader_lock(7), store.leader_lock(7), store.leader_lock(7)
    assert a.hold() and not b.hold()
    b.release()  # releasing a lock not held takes nothing from the holder
    assert a.hold() and not c.hold()
    a.release()
    # The next contender leads; a released lock stays released (a stopped router), as on Postgres.
    assert c.hold() and not a.hold() and not b.hold()


def test_leader_lock_is_lost_in_an_outage_and_taken_again_after(store):
    a, b = store.leader_lock(7), store.leader_lock(7)
    assert a.hold()
    store.available = False
    assert a.hold() is False and b.hold() is False
    store.available = True
    assert b.hold() is True and a.hold() is False


def test_locks_of_separate_stores_do_not_contend(clock):
    a = MemoryJobStore(clock=clock).leader_lock(7)
    b = MemoryJobStore(clock=clock).leader_lock(7)
    assert a.hold() and b.hold()


def test_only_one_of_many_threads_leads(store):
    locks = [store.leader_lock(7) for _ in range(8)]
    got: list[bool] = []
    barrier = threading.Barrier(len(locks))

    def contend(lock):
        barrier.wait()
        got.append(lock.hold())

    ts = [threading.Thread(target=contend, args=(lk,)) for lk in locks]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert sorted(got) == [False] * 7 + [True]
