"""The job store against real Postgres (the machine's and the embedded one)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from gpu_orchestrator.jobs import JobNotFound, JobStatus, QueueFull, TransitionError
from gpu_orchestrator.store import JobStore, create_engine, run_migrations


def submit(store, app="a", **kw):
    job, created = store.submit(app_id=app, params=kw.pop("params", {"x": 1}), **kw)
    assert created
    return job


def test_submit_persists_queued_row(store):
    job = submit(store, params={"prompt": "hi"}, priority=3, max_attempts=2)
    got = store.get(job.id)
    assert got.status == JobStatus.queued
    assert got.params == {"prompt": "hi"}
    assert (got.priority, got.attempts, got.max_attempts) == (3, 0, 2)
    assert got.created_at is not None and got.started_at is None


def test_get_unknown_raises(store):
    with pytest.raises(JobNotFound):
        store.get(uuid.uuid4())


def test_idempotency_key_returns_existing_job(store):
    a, created_a = store.submit(app_id="a", params={"x": 1}, idempotency_key="k1")
    b, created_b = store.submit(app_id="a", params={"x": 2}, idempotency_key="k1")
    assert created_a and not created_b
    assert a.id == b.id and b.params == {"x": 1}
    assert len(store.list(app_id="a")[0]) == 1


def test_queue_limit_raises_queue_full(store):
    for _ in range(3):
        submit(store, max_queued=3)
    with pytest.raises(QueueFull) as e:
        submit(store, max_queued=3)
    assert e.value.retry_after_s >= 1
    submit(store, app="b", max_queued=3)  # other apps unaffected


def test_claim_priority_order_and_attempts(store):
    low = submit(store, priority=0)
    high = submit(store, priority=5)
    mid = submit(store, priority=2)
    jobs = store.claim(app_id="a", owner="r1", limit=10, lease_s=30, max_in_flight=10)
    assert [j.id for j in jobs] == [high.id, mid.id, low.id]
    assert all(j.status == JobStatus.running and j.attempts == 1 and j.lease_owner == "r1" for j in jobs)
    assert all(j.started_at is not None for j in jobs)


def test_claim_respects_max_in_flight_across_owners(store):
    for _ in range(5):
        submit(store)
    assert len(store.claim(app_id="a", owner="r1", limit=10, lease_s=30, max_in_flight=2)) == 2
    assert store.claim(app_id="a", owner="r2", limit=10, lease_s=30, max_in_flight=2) == []


def test_concurrent_claimers_never_share_a_job(store, database_url):
    n = 60
    for _ in range(n):
        submit(store)
    claimed: dict[str, list] = {}
    stores = [JobStore.connect(database_url, migrate=False) for _ in range(4)]

    def worker(i):
        got = []
        s = stores[i]
        while True:
            batch = s.claim(app_id="a", owner=f"r{i}", limit=3, lease_s=30, max_in_flight=1000)
            if not batch:
                break
            got += [j.id for j in batch]
        claimed[f"r{i}"] = got

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    [s.close() for s in stores]
    all_ids = [j for ids in claimed.values() for j in ids]
    assert len(all_ids) == n and len(set(all_ids)) == n


def test_complete_is_guarded_by_owner_and_attempt(store):
    submit(store)
    (job,) = store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
    with pytest.raises(TransitionError):
        store.complete(job_id=job.id, owner="someone-else", attempt=1, result={"ok": 1}, backend="local:x")
    with pytest.raises(TransitionError):
        store.complete(job_id=job.id, owner="r1", attempt=2, result={"ok": 1}, backend="local:x")
    done = store.complete(job_id=job.id, owner="r1", attempt=1, result={"ok": 1}, backend="local:x")
    assert done.status == JobStatus.succeeded and done.result == {"ok": 1} and done.finished_at is not None
    # A recorded result is never overwritten.
    with pytest.raises(TransitionError) as e:
        store.complete(job_id=job.id, owner="r1", attempt=1, result={"ok": 2}, backend="local:x")
    assert e.value.current == "succeeded"
    assert store.get(job.id).result == {"ok": 1}


def test_fail_attempt_requeues_then_fails(store):
    submit(store, max_attempts=2)
    (j,) = store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
    after = store.fail_attempt(job_id=j.id, owner="r1", attempt=1, error="RuntimeError: boom")
    assert after.status == JobStatus.queued and after.error == "RuntimeError: boom" and after.lease_owner is None
    (j,) = store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
    assert j.attempts == 2
    after = store.fail_attempt(job_id=j.id, owner="r1", attempt=2, error="RuntimeError: boom again")
    assert after.status == JobStatus.failed and after.finished_at is not None
    assert after.error == "RuntimeError: boom again"


def test_non_retryable_failure_fails_at_once(store):
    submit(store, max_attempts=5)
    (j,) = store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
    after = store.fail_attempt(job_id=j.id, owner="r1", attempt=1, error="bad", retryable=False)
    assert after.status == JobStatus.failed


def test_cancel_queued_running_and_finished(store):
    q = submit(store)
    job, prev = store.cancel(q.id)
    assert prev == JobStatus.queued and job.status == JobStatus.cancelled
    r = submit(store)
    store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
    job, prev = store.cancel(r.id)
    assert prev == JobStatus.running and job.status == JobStatus.cancelled
    # The running attempt's late result is dropped.
    with pytest.raises(TransitionError):
        store.complete(job_id=r.id, owner="r1", attempt=1, result=1, backend="local:x")
    assert store.get(r.id).status == JobStatus.cancelled
    with pytest.raises(TransitionError) as e:
        store.cancel(r.id)
    assert e.value.current == "cancelled"
    with pytest.raises(JobNotFound):
        store.cancel(uuid.uuid4())


def test_expired_lease_is_rescued_then_failed(store):
    submit(store, max_attempts=2)
    (j,) = store.claim(app_id="a", owner="dead", limit=1, lease_s=0.2, max_in_flight=5)
    assert store.rescue_expired() == []  # not yet expired
    time.sleep(0.4)
    (r,) = store.rescue_expired()
    assert r.job_id == j.id and r.status == JobStatus.queued and "lease expired" in r.error
    (j2,) = store.claim(app_id="a", owner="alive", limit=1, lease_s=0.2, max_in_flight=5)
    assert j2.attempts == 2
    # The dead owner's late result cannot land.
    with pytest.raises(TransitionError):
        store.complete(job_id=j.id, owner="dead", attempt=1, result=1, backend="x")
    time.sleep(0.4)
    (r,) = store.rescue_expired()
    assert r.status == JobStatus.failed
    assert store.get(j.id).status == JobStatus.failed


def test_heartbeat_extends_only_own_leases(store):
    submit(store)
    (j,) = store.claim(app_id="a", owner="r1", limit=1, lease_s=0.3, max_in_flight=5)
    assert store.heartbeat(owner="r2", job_ids=[j.id], lease_s=30) == set()
    assert store.heartbeat(owner="r1", job_ids=[j.id], lease_s=30) == {j.id}
    time.sleep(0.5)
    assert store.rescue_expired() == []


def test_list_filters_and_paginates(store):
    ids = [submit(store, app="a").id for _ in range(5)] + [submit(store, app="b").id]
    page1, cur = store.list(app_id="a", limit=2)
    page2, cur2 = store.list(app_id="a", limit=2, cursor=cur)
    page3, cur3 = store.list(app_id="a", limit=2, cursor=cur2)
    got = [j.id for j in page1 + page2 + page3]
    assert got == list(reversed(ids[:5])) and cur3 is None
    store.cancel(ids[0])
    cancelled, _ = store.list(status=JobStatus.cancelled)
    assert [j.id for j in cancelled] == [ids[0]]
    with pytest.raises(ValueError):
        store.list(cursor="garbage!")


def test_queue_stats(store):
    submit(store, app="a", priority=1)
    submit(store, app="a", priority=7)
    submit(store, app="b")
    store.claim(app_id="b", owner="r", limit=1, lease_s=30, max_in_flight=5)
    stats = store.queue_stats()
    assert stats["a"].queued == 2 and stats["a"].running == 0 and stats["a"].max_queued_priority == 7
    assert stats["b"].queued == 0 and stats["b"].running == 1
    assert store.apps_with_queued() == {"a"}


def test_migrations_are_idempotent_and_concurrent_safe(database_url):
    engines = [create_engine(database_url) for _ in range(3)]
    ts = [threading.Thread(target=run_migrations, args=(e,)) for e in engines]
    [t.start() for t in ts]
    [t.join() for t in ts]
    with engines[0].connect() as c:
        assert c.execute(sa.text("SELECT version_num FROM gpu_orch_alembic_version")).scalar() == "0001"
    [e.dispose() for e in engines]


def test_status_check_constraint_rejects_unknown_status(store):
    job = submit(store)
    with pytest.raises(sa.exc.IntegrityError):
        with store.engine.begin() as c:
            c.execute(sa.text("UPDATE jobs SET status = 'weird' WHERE id = :id"), {"id": job.id})


def test_fail_queued_ends_only_that_apps_queued_jobs(store):
    queued = [store.submit(app_id="zimage", params={"n": i}, max_attempts=2, timeout_s=60)[0] for i in range(2)]
    third = store.submit(app_id="zimage", params={}, max_attempts=2, timeout_s=60)[0]
    other = store.submit(app_id="sdxl", params={}, max_attempts=2, timeout_s=60)[0]
    # Claim the oldest: it runs on; the two others stay queued.
    claimed = store.claim(app_id="zimage", owner="r1", limit=1, lease_s=30, max_in_flight=4)
    assert [j.id for j in claimed] == [queued[0].id]
    failed = store.fail_queued("zimage", "no capacity: cannot place zimage")
    assert set(failed) == {queued[1].id, third.id}
    for job_id in failed:
        job = store.get(job_id)
        assert job.status == JobStatus.failed and job.error == "no capacity: cannot place zimage" and job.finished_at
    assert store.get(queued[0].id).status == JobStatus.running and store.get(other.id).status == JobStatus.queued
