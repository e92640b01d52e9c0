"""The job store's behaviour, against every store: the in-memory one and real Postgres (the
machine's and the embedded one). The `store` fixture here is parametrised over them; tests of
Postgres itself (migrations, SQL plans, timeouts, pools, connection loss) take `pg_store` or a
database_url."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from gpu_orchestrator.core.jobs import IdempotencyConflict, JobNotFound, JobStatus, QueueFull, RetryPolicy, TransitionError
from gpu_orchestrator.store.base import ANY_ROUTE, ResultNotStorable, StartNow, StoreUnavailable
from gpu_orchestrator.store.memory import MemoryJobStore
from gpu_orchestrator.store.pg_engine import create_engine, is_transient_db_error, run_migrations
from gpu_orchestrator.store.postgres import PostgresJobStore


@pytest.fixture
def store(any_store):
    return any_store


@pytest.fixture
def pg_store(database_url):
    s = PostgresJobStore.connect(database_url, migrate=False)
    yield s
    s.close()


def is_memory(store) -> bool:
    return isinstance(store, MemoryJobStore)


def submit(store, app="a", **kw):
    job, created = store.submit(app_id=app, params=kw.pop("params", {"x": 1}), **kw)
    assert created
    return job


def wait(store, seconds):
    """Let time pass: the memory store's clock moves; Postgres' has to be waited for."""
    if is_memory(store):
        store.clock.advance(seconds)
    else:
        time.sleep(seconds)


def expire_lease(store, job_id):
    """What a dead router leaves behind: the lease's time is up."""
    if is_memory(store):
        left = (store.get(job_id).lease_expires_at.timestamp() - store.clock())
        store.clock.advance(left + 1)
        return
    with store.engine.begin() as c:
        c.execute(sa.text("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = :id"), {"id": job_id})


def backdate(store, job_id, seconds):
    """Make a job `seconds` older. (The memory store's clock moves instead, so every job existing
    now ages; the tests below create the jobs that must stay young afterwards.)"""
    if is_memory(store):
        store.clock.advance(seconds)
        return
    with store.engine.begin() as c:
        c.execute(sa.text("UPDATE jobs SET created_at = created_at - make_interval(secs => :s) WHERE id = :id"),
                  {"id": job_id, "s": seconds})


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
    a, created_a = store.submit(app_id="a", params={"x": 1, "y": [1, 2]}, idempotency_key="k1")
    # The same body (key order does not matter) is a retry: the same job.
    b, created_b = store.submit(app_id="a", params={"y": [1, 2], "x": 1}, idempotency_key="k1")
    assert created_a and not created_b
    assert a.id == b.id
    assert len(store.list(app_id="a")[0]) == 1


def test_idempotency_key_with_another_body_conflicts(store):
    a, _ = store.submit(app_id="a", params={"x": 1}, priority=1, idempotency_key="k1")
    with pytest.raises(IdempotencyConflict) as e:
        store.submit(app_id="a", params={"x": 2}, priority=1, idempotency_key="k1")
    assert e.value.job_id == a.id and e.value.key == "k1"
    with pytest.raises(IdempotencyConflict):
        store.submit(app_id="a", params={"x": 1}, priority=2, idempotency_key="k1")
    assert [j.id for j in store.list(app_id="a")[0]] == [a.id]


def test_idempotency_keys_are_scoped_per_app(store):
    a, created_a = store.submit(app_id="a", params={"x": 1}, idempotency_key="k1")
    b, created_b = store.submit(app_id="b", params={"x": 1}, idempotency_key="k1")
    assert created_a and created_b and a.id != b.id and b.app_id == "b"


def test_idempotency_key_expires_with_its_retention(store):
    old, _ = store.submit(app_id="a", params={"x": 1}, idempotency_key="k1")
    backdate(store, old.id, 25 * 3600)
    # Past the 24 h default the key starts a new job, even with another body.
    new, created = store.submit(app_id="a", params={"x": 2}, idempotency_key="k1")
    assert created and new.id != old.id
    assert store.get(old.id).idempotency_key is None and store.get(old.id).params == {"x": 1}
    again, created = store.submit(app_id="a", params={"x": 2}, idempotency_key="k1")
    assert not created and again.id == new.id
    # A shorter retention, per call.
    fresh, created = store.submit(app_id="a", params={"x": 3}, idempotency_key="k1", idempotency_ttl_s=0.0)
    assert created and fresh.id != new.id


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


def test_concurrent_claimers_never_share_a_job(store):
    n = 60
    for _ in range(n):
        submit(store)
    claimed: dict[str, list] = {}
    if is_memory(store):  # threads on one store, as the dispatcher's to_thread calls are
        stores = [store] * 4
    else:  # four routers: a connection pool each
        url = store.engine.url.render_as_string(hide_password=False)
        stores = [PostgresJobStore.connect(url, migrate=False) for _ in range(4)]

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
    if not is_memory(store):
        [s.close() for s in stores]
    all_ids = [j for ids in claimed.values() for j in ids]
    assert len(all_ids) == n and len(set(all_ids)) == n


def test_a_job_starts_at_submit_only_with_nothing_waiting_and_a_slot_free(store):
    start = StartNow(owner="r1", lease_s=30, max_in_flight=2)
    first = submit(store, start=start)
    # Running under r1's lease, attempt 1, already dispatched: a lost lease is a lost run, as after a claim.
    assert first.status == JobStatus.running and first.lease_owner == "r1" and first.claims == first.attempts == 1
    assert first.started_at is not None and first.lease_expires_at is not None
    assert submit(store, start=start).status == JobStatus.running
    third = submit(store, start=start)  # the app's two slots are taken (by any owner)
    assert third.status == JobStatus.queued and third.lease_owner is None and third.claims == 0
    store.complete(job_id=first.id, owner="r1", attempt=1, result={"ok": 1}, backend="local:m")
    # A slot is free, but `third` waits: a new job never jumps the queue.
    assert submit(store, start=start).status == JobStatus.queued
    assert [j.id for j in store.claim(app_id="a", owner="r2", limit=5, lease_s=30, max_in_flight=2)] == [third.id]
    # Other apps and other routes have queues and slots of their own.
    assert submit(store, app="b", start=start).status == JobStatus.running
    assert submit(store, route="replicate", start=start).status == JobStatus.running


def test_a_job_in_its_retry_backoff_does_not_hold_back_a_new_start(store):
    start = StartNow(owner="r1", lease_s=30, max_in_flight=2)
    job = submit(store, start=start)
    store.fail_attempt(job_id=job.id, owner="r1", attempt=1, error="boom", retry_delay_s=300)
    assert submit(store, start=start).status == JobStatus.running


def test_starts_at_submit_keep_the_in_flight_bound_under_concurrency(store):
    cap, n = 3, 40
    if is_memory(store):
        stores = [store] * 4
    else:  # four routers: a connection pool each
        url = store.engine.url.render_as_string(hide_password=False)
        stores = [PostgresJobStore.connect(url, migrate=False) for _ in range(4)]
    started = []

    def router(i):
        for _ in range(n // 4):
            job = submit(stores[i], start=StartNow(owner=f"r{i}", lease_s=30, max_in_flight=cap))
            if job.status == JobStatus.running:
                started.append(job.id)

    ts = [threading.Thread(target=router, args=(i,)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    if not is_memory(store):
        [s.close() for s in stores]
    assert len(started) == cap
    assert store.queue_stats()["a"].running == cap and store.queue_stats()["a"].queued == n - cap


@pytest.mark.parametrize("path", ["sqlalchemy", "asyncpg"])
def test_a_start_that_waited_for_the_claim_lock_counts_the_start_committed_meanwhile(pg_store, database_url, path):
    """The insert-and-start is one statement: it takes the app's claim lock, then checks for a free
    slot. The check must see what another router committed while this one waited for the lock (a
    statement's own snapshot predates the wait): the app's one slot is taken, so this job queues."""
    import asyncio

    from gpu_orchestrator.store.pg_async import AsyncJobPath
    from gpu_orchestrator.store.pg_sql import INSERT_STARTED, insert_args

    def ours() -> JobStatus:
        kw = dict(app_id="a", params={"x": 1}, priority=0, max_attempts=3, timeout_s=60, route=None,
                  route_reason=None, owner=None, start=StartNow(owner="r2", lease_s=30, max_in_flight=1))
        if path == "sqlalchemy":
            return pg_store.submit(**kw)[0].status
        fast = AsyncJobPath(database_url, pool_size=1)
        try:
            return asyncio.run(fast.submit(max_queued=None, **kw)).status
        finally:
            fast.close()

    got: dict[str, JobStatus] = {}
    with pg_store.engine.connect() as other:
        tx = other.begin()  # another router's start: it holds the lock until its commit
        theirs = other.execute(sa.text(INSERT_STARTED), insert_args(
            job_id=None, app_id="a", params={}, priority=0, max_attempts=3, timeout_s=60, key=None, fingerprint=None,
            route=None, reason=None, owner=None, start=StartNow(owner="r1", lease_s=30, max_in_flight=1))).first()
        assert theirs.status == "running"
        t = threading.Thread(target=lambda: got.update(status=ours()))
        t.start()
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        with pg_store.engine.connect() as look:
            deadline = time.monotonic() + 10
            while not look.execute(sa.text(waiting)).scalar() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert look.execute(sa.text(waiting)).scalar() == 1, "our start never waited for the claim lock"
        tx.commit()
        t.join(10)
    assert got["status"] == JobStatus.queued
    assert pg_store.queue_stats()["a"].running == 1


def test_a_repeated_key_returns_the_first_job_whether_it_started_or_not(store):
    start = StartNow(owner="r1", lease_s=30, max_in_flight=1)
    first = submit(store, idempotency_key="k1", start=start)
    again, created = store.submit(app_id="a", params={"x": 1}, idempotency_key="k1", start=start)
    assert not created and again.id == first.id and again.status == JobStatus.running
    with pytest.raises(IdempotencyConflict):
        store.submit(app_id="a", params={"x": 2}, idempotency_key="k1", start=start)


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
    (first,) = store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
    after = store.fail_attempt(job_id=first.id, owner="r1", attempt=1, error="RuntimeError: boom",
                               backend="local:x")
    assert after.status == JobStatus.queued and after.error == "RuntimeError: boom" and after.lease_owner is None
    assert after.backend == "local:x"
    (j,) = store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
    assert j.attempts == 2 and j.started_at == first.started_at  # started_at is the first run's start
    after = store.fail_attempt(job_id=j.id, owner="r1", attempt=2, error="RuntimeError: boom again")
    assert after.status == JobStatus.failed and after.finished_at is not None
    assert after.error == "RuntimeError: boom again"
    assert after.backend == "local:x"  # a failure that names no backend keeps the last one


def test_non_retryable_failure_fails_at_once(store):
    submit(store, max_attempts=5)
    (j,) = store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
    after = store.fail_attempt(job_id=j.id, owner="r1", attempt=1, error="bad", retryable=False)
    assert after.status == JobStatus.failed


def test_cancel_queued_running_and_finished(store):
    q = submit(store)
    job, prev = store.cancel(q.id)
    assert prev == JobStatus.queued and job.status == JobStatus.cancelled
    assert job.error == "cancelled by request" and job.finished_at is not None
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
    done = submit(store)
    store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
    store.complete(job_id=done.id, owner="r1", attempt=1, result=1, backend="x")
    with pytest.raises(TransitionError) as e:
        store.cancel(done.id)
    assert e.value.current == "succeeded" and store.get(done.id).status == JobStatus.succeeded


NO_BACKOFF = RetryPolicy(backoff_s=0.0, max_lost_attempts=3)


def test_expired_lease_of_a_dispatched_run_counts_as_lost_not_as_an_attempt(store):
    submit(store, max_attempts=2)
    (j,) = store.claim(app_id="a", owner="dead", limit=1, lease_s=0.2, max_in_flight=5)
    store.mark_dispatched(job_id=j.id, owner="dead", attempt=1)
    assert store.rescue_expired(NO_BACKOFF) == []  # not yet expired
    wait(store, 0.4)
    (r,) = store.rescue_expired(NO_BACKOFF)
    assert r.job_id == j.id and r.status == JobStatus.queued and r.lost and "lease expired" in r.error
    job = store.get(j.id)
    assert (job.attempts, job.lost_attempts, job.claims) == (0, 1, 1)
    (j2,) = store.claim(app_id="a", owner="alive", limit=1, lease_s=30, max_in_flight=5)
    assert (j2.attempts, j2.claims) == (1, 2)
    # The dead owner's late result cannot land.
    with pytest.raises(TransitionError):
        store.complete(job_id=j.id, owner="dead", attempt=1, result=1, backend="x")
    done = store.complete(job_id=j.id, owner="alive", attempt=2, result=2, backend="x")
    assert done.status == JobStatus.succeeded and done.error is None and done.attempts == 1


def test_expired_lease_of_an_undispatched_claim_is_free(store):
    submit(store, max_attempts=1)
    for _ in range(4):  # more times than max_attempts or the lost cap allow
        (j,) = store.claim(app_id="a", owner="dead", limit=1, lease_s=30, max_in_flight=5)
        expire_lease(store, j.id)
        (r,) = store.rescue_expired(NO_BACKOFF)
        assert r.status == JobStatus.queued and not r.lost and "before handing it to a model replica" in r.error
    job = store.get(j.id)
    assert (job.status, job.attempts, job.lost_attempts, job.claims) == (JobStatus.queued, 0, 0, 4)
    assert job.run_after is None  # no backoff: it never ran


def test_a_job_that_keeps_losing_its_router_fails_with_the_reason(store):
    submit(store, max_attempts=2)
    for n in range(1, 4):
        (j,) = store.claim(app_id="a", owner=f"router-{n}", limit=1, lease_s=30, max_in_flight=5)
        store.mark_dispatched(job_id=j.id, owner=f"router-{n}", attempt=n)
        expire_lease(store, j.id)
        (r,) = store.rescue_expired(NO_BACKOFF)
    assert r.status == JobStatus.failed
    job = store.get(j.id)
    assert job.status == JobStatus.failed and job.finished_at is not None
    assert job.lost_attempts == 3 and job.attempts == 0
    assert job.error.startswith("lost its router 3 times") and "attempt 3" in job.error
    assert [e["kind"] for e in job.errors] == ["lost", "lost", "lost"]


def test_lost_run_comes_back_after_a_backoff(store):
    submit(store)
    (j,) = store.claim(app_id="a", owner="dead", limit=1, lease_s=30, max_in_flight=5)
    store.mark_dispatched(job_id=j.id, owner="dead", attempt=1)
    expire_lease(store, j.id)
    store.rescue_expired(RetryPolicy(backoff_s=30.0))
    job = store.get(j.id)
    assert job.status == JobStatus.queued and job.run_after is not None
    assert store.claim(app_id="a", owner="r", limit=1, lease_s=30, max_in_flight=5) == []


def test_heartbeat_extends_only_own_leases_of_the_same_attempt(store):
    submit(store)
    (j,) = store.claim(app_id="a", owner="r1", limit=1, lease_s=0.3, max_in_flight=5)
    assert store.heartbeat(owner="r2", leases=[(j.id, 1)], lease_s=30) == set()
    assert store.heartbeat(owner="r1", leases=[(j.id, 2)], lease_s=30) == set()
    assert store.heartbeat(owner="r1", leases=[(j.id, 1)], lease_s=30) == {(j.id, 1)}
    wait(store, 0.5)
    assert store.rescue_expired() == []
    # Rescued and claimed again by the same router: only the new attempt's lease is renewed.
    expire_lease(store, j.id)
    store.rescue_expired()
    (j2,) = store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
    assert j2.claims == 2
    assert store.heartbeat(owner="r1", leases=[(j.id, 1), (j.id, 2)], lease_s=30) == {(j.id, 2)}
    with pytest.raises(TransitionError):
        store.complete(job_id=j.id, owner="r1", attempt=1, result=1, backend="x")
    with pytest.raises(TransitionError):
        store.mark_dispatched(job_id=j.id, owner="r1", attempt=1)


def test_release_hands_back_every_lease_of_its_owner_at_once(store):
    a, b, other = submit(store), submit(store), submit(store, app="b")
    ja, jb = store.claim(app_id="a", owner="leaving", limit=2, lease_s=300, max_in_flight=5)
    store.mark_dispatched(job_id=ja.id, owner="leaving", attempt=1)
    store.claim(app_id="b", owner="staying", limit=1, lease_s=300, max_in_flight=5)
    released = store.release(owner="leaving", policy=RetryPolicy(backoff_s=60.0))
    assert {r.job_id for r in released} == {a.id, b.id}
    assert all(r.status == JobStatus.queued for r in released)
    ga, gb = store.get(a.id), store.get(b.id)
    assert (ga.status, ga.attempts, ga.lost_attempts, ga.lease_owner) == (JobStatus.queued, 0, 1, None)
    assert (gb.status, gb.attempts, gb.lost_attempts) == (JobStatus.queued, 0, 0)
    assert ga.errors[-1]["kind"] == "released" and "stopped" in ga.error
    assert store.get(other.id).status == JobStatus.running
    # No backoff: another replica takes them at once.
    assert len(store.claim(app_id="a", owner="next", limit=5, lease_s=30, max_in_flight=5)) == 2


def test_failed_attempt_waits_for_its_backoff(store):
    submit(store, max_attempts=3)
    (j,) = store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
    after = store.fail_attempt(job_id=j.id, owner="r1", attempt=1, error="boom", retry_delay_s=0.6)
    assert after.status == JobStatus.queued and after.run_after is not None
    assert after.to_api()["retry_at"] is not None
    assert store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5) == []
    wait(store, 0.8)
    (j,) = store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
    assert j.attempts == 2 and j.run_after is None


def test_each_attempts_error_is_kept(store):
    submit(store, max_attempts=3)
    (j,) = store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
    store.fail_attempt(job_id=j.id, owner="r1", attempt=1, error="RuntimeError: first")
    (j,) = store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
    store.mark_dispatched(job_id=j.id, owner="r1", attempt=2)
    expire_lease(store, j.id)
    store.rescue_expired(NO_BACKOFF)
    (j,) = store.claim(app_id="a", owner="r2", limit=1, lease_s=30, max_in_flight=5)
    assert j.error.startswith("lease expired")  # the latest error stays while it runs again
    after = store.fail_attempt(job_id=j.id, owner="r2", attempt=3, error="timed out after 5 s", kind="timeout")
    assert after.status == JobStatus.queued and after.error == "timed out after 5 s"
    errors = store.get(j.id).to_api()["errors"]
    assert [(e["attempt"], e["kind"]) for e in errors] == [(1, "error"), (2, "lost"), (3, "timeout")]
    assert errors[0]["error"] == "RuntimeError: first" and all(e["at"] for e in errors)


def test_claim_uses_the_queued_index(pg_store):
    store = pg_store
    for i in range(20):
        submit(store, params={"i": i})
    with store.engine.begin() as c:
        c.execute(sa.text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(c.execute(sa.text(
            "EXPLAIN SELECT id FROM jobs WHERE app_id = 'a' AND status = 'queued' "
            "AND (run_after IS NULL OR run_after <= now()) ORDER BY priority DESC, created_at, id LIMIT 5 "
            "FOR UPDATE SKIP LOCKED")).scalars())
    assert "jobs_queued_idx" in plan


def test_statement_timeout_bounds_every_query(database_url):
    s = PostgresJobStore.connect(database_url, migrate=False, statement_timeout_s=0.5)
    try:
        for eng in (s.engine, s.lease_engine):
            with eng.connect() as c:
                assert c.execute(sa.text("SHOW statement_timeout")).scalar() == "500ms"
        t0 = time.monotonic()
        with pytest.raises(sa.exc.OperationalError):
            with s.engine.connect() as c:
                c.execute(sa.text("SELECT pg_sleep(5)"))
        assert time.monotonic() - t0 < 3
    finally:
        s.close()


def test_lease_renewal_has_its_own_pool(database_url):
    s = PostgresJobStore.connect(database_url, migrate=False, pool_size=2, max_overflow=0)
    held = []
    try:
        s.submit(app_id="a", params={})
        (j,) = s.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
        held = [s.engine.connect() for _ in range(2)]  # a burst of client reads holds every connection
        got = {}
        t = threading.Thread(target=lambda: got.update(held=s.heartbeat(owner="r1", leases=[(j.id, 1)], lease_s=30)))
        t.start()
        t.join(timeout=5)
        assert not t.is_alive() and got["held"] == {(j.id, 1)}
    finally:
        [c.close() for c in held]
        s.close()


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
    assert store.apps_with_queued() == {"a": {None}}
    store.submit(app_id="a", params={}, max_attempts=1, timeout_s=60, route="replicate", route_reason="busy")
    assert store.apps_with_queued() == {"a": {None, "replicate"}}
    assert store.queue_stats()["a"].queued == 2  # local demand only: the cloud's job asks nothing of our GPUs
    # One app's (a submit's wait estimate reads just its own).
    assert store.queue_stats(app_id="b") == {"b": stats["b"]} and store.queue_stats(app_id="c") == {}


def test_jobs_per_minute_counts_the_last_hour_by_current_status(store):
    done = submit(store, app="a")
    submit(store, app="a")
    submit(store, app="b")
    [claimed] = store.claim(app_id="a", owner="r", limit=1, lease_s=30, max_in_flight=5)
    assert claimed.id == done.id
    store.complete(job_id=done.id, owner="r", attempt=claimed.attempts, result={}, backend="local:echo")
    rows = store.jobs_per_minute(minutes=60)
    by_status = {}
    for m in rows:
        assert m.minute.second == 0 and m.minute.microsecond == 0
        by_status[m.status.value] = by_status.get(m.status.value, 0) + m.count
    assert by_status == {"queued": 2, "succeeded": 1}


def test_migrations_are_idempotent_and_concurrent_safe(database_url):
    engines = [create_engine(database_url) for _ in range(3)]
    ts = [threading.Thread(target=run_migrations, args=(e,)) for e in engines]
    [t.start() for t in ts]
    [t.join() for t in ts]
    with engines[0].connect() as c:
        assert c.execute(sa.text("SELECT version_num FROM gpu_orch_alembic_version")).scalar() == "0007"
    [e.dispose() for e in engines]


def test_status_check_constraint_rejects_unknown_status(pg_store):
    store = pg_store
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


def test_fail_queued_spares_jobs_younger_than_the_grace(store):
    old = submit(store, app="gone")
    backdate(store, old.id, 600)
    young = submit(store, app="gone")
    assert store.fail_queued("gone", "app gone is no longer configured", older_than_s=300) == [old.id]
    assert store.get(young.id).status == JobStatus.queued


def test_reroute_queued_moves_only_the_named_route_and_ids(store):
    local = [submit(store, app="a") for _ in range(3)]
    cloud = store.submit(app_id="a", params={}, max_attempts=1, timeout_s=60, route="modal", route_reason="busy")[0]
    other = submit(store, app="b")
    moved = store.reroute_queued("a", "replicate", "no local GPU can hold the model", ids=[local[0].id, local[2].id])
    assert set(moved) == {local[0].id, local[2].id}
    assert [(store.get(j.id).route, store.get(j.id).route_reason) for j in local] == [
        ("replicate", "no local GPU can hold the model"), (None, None), ("replicate", "no local GPU can hold the model")]
    # Back from a cloud route to the local queue: only that route's jobs.
    assert store.reroute_queued("a", None, "modal is unavailable here", frm="modal") == [cloud.id]
    back = store.get(cloud.id)
    assert back.route is None and back.route_reason == "modal is unavailable here" and back.status == JobStatus.queued
    assert store.get(other.id).route is None and store.get(local[0].id).route == "replicate"


def test_fail_queued_by_route(store):
    local = submit(store, app="c")
    cloud = store.submit(app_id="c", params={}, max_attempts=1, timeout_s=60, route="modal", route_reason="cloud-only")[0]
    assert store.fail_queued("c", "no capacity") == [local.id]  # local jobs only by default
    assert store.get(cloud.id).status == JobStatus.queued
    again = store.submit(app_id="c", params={}, max_attempts=1, timeout_s=60, route="replicate", route_reason="x")[0]
    assert store.fail_queued("c", "modal unavailable", route="modal") == [cloud.id]
    assert store.fail_queued("c", "app c is no longer configured", route=ANY_ROUTE) == [again.id]
    assert store.get(cloud.id).error == "modal unavailable" and store.get(again.id).status == JobStatus.failed


def test_service_times_average_recent_successes_only(store):
    for _ in range(2):
        submit(store, app="a")
    submit(store, app="b")
    ja, jb = store.claim(app_id="a", owner="r", limit=2, lease_s=30, max_in_flight=5)
    (jf,) = store.claim(app_id="b", owner="r", limit=1, lease_s=30, max_in_flight=5)
    wait(store, 0.3)
    store.complete(job_id=ja.id, owner="r", attempt=1, result=1, backend="x")
    wait(store, 0.3)
    store.complete(job_id=jb.id, owner="r", attempt=1, result=1, backend="x")
    store.fail_attempt(job_id=jf.id, owner="r", attempt=1, error="boom", retryable=False)
    times = store.service_times()
    assert set(times) == {"a"}  # failures are not service times
    assert 0.44 <= times["a"] < 5  # the mean of about 0.3 s and 0.6 s
    wait(store, 1.0)
    assert store.service_times(window_s=0.5) == {}


def test_queue_stats_age_of_the_oldest_queued_job(store):
    submit(store, app="a")
    wait(store, 0.5)
    submit(store, app="a")
    age = store.queue_stats()["a"].oldest_queued_age_s
    assert 0.5 <= age < 5


def test_error_history_is_capped_and_long_errors_clipped(store):
    submit(store, max_attempts=1)
    for n in range(1, 52):  # a released claim is free, so one job collects many errors
        (j,) = store.claim(app_id="a", owner="r", limit=1, lease_s=30, max_in_flight=5)
        store.release(owner="r")
    errors = store.get(j.id).errors
    assert len(errors) == 50 and errors[0]["attempt"] == 2 and errors[-1]["attempt"] == 51
    (j,) = store.claim(app_id="a", owner="r", limit=1, lease_s=30, max_in_flight=5)
    after = store.fail_attempt(job_id=j.id, owner="r", attempt=52, error="x" * 5000)
    assert after.status == JobStatus.failed
    assert len(after.error) == 2000 and after.error.endswith("…") and after.errors[-1]["error"] == after.error
    assert len(after.errors) == 50


def test_results_and_params_come_back_as_json(store):
    job = submit(store, params={"sizes": (1, 2), "n": 3})
    assert store.get(job.id).params == {"sizes": [1, 2], "n": 3}
    store.claim(app_id="a", owner="r", limit=1, lease_s=30, max_in_flight=5)
    when = uuid.uuid4()
    done = store.complete(job_id=job.id, owner="r", attempt=1, result={"id": when, 1: "one"}, backend="x")
    assert done.result == {"id": str(when), "1": "one"} and store.get(job.id).result == done.result


def test_ping_answers_when_the_store_is_up(store):
    store.ping()  # no exception


def test_leader_lock_has_one_holder_at_a_time(store):
    a, b = store.leader_lock(0x7465737401), store.leader_lock(0x7465737401)
    other = store.leader_lock(0x7465737402)
    try:
        assert a.hold() is True
        assert b.hold() is False
        assert a.hold() is True  # still held: confirming is not taking it again
        assert other.hold() is True  # another key is another lock
        a.release()
        assert b.hold() is True and a.hold() is False
    finally:
        for lock in (a, b, other):
            lock.release()


def test_leader_lock_moves_on_when_its_holders_connection_dies(pg_store, database_url):
    key = 0x7465737403
    a, b = pg_store.leader_lock(key), pg_store.leader_lock(key)
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        assert a.hold() and not b.hold()
        with admin.connect() as c:  # the holder's connection dies (a network cut, a killed backend)
            killed = c.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                                       "AND ((classid::bigint << 32) | objid::bigint) = :k"), {"k": key}).scalars().all()
        assert killed == [True]
        assert a.hold() is False  # the holder learns it lost the lead
        assert b.hold() is True
        assert a.hold() is False
    finally:
        a.release()
        b.release()
        admin.dispose()


def test_leader_lock_is_done_after_release(pg_store):
    # release() is final: a hold() that arrives late (a worker thread still running when the arbiter
    # stopped) must not take the lock back, and another contender can take it at once.
    key = 0x7465737404
    a, b = pg_store.leader_lock(key), pg_store.leader_lock(key)
    try:
        assert a.hold() is True and b.hold() is False
        a.release()
        assert a.closed
        assert a.hold() is False
        assert b.hold() is True
        assert a.hold() is False  # still done, even with the lock now free of a's connection
        b.release()
        assert a.hold() is False  # nobody holds it now, and a still does not take it
        c = pg_store.leader_lock(key)
        assert c.hold() is True
        c.release()
    finally:
        a.release()
        b.release()


def test_leader_lock_release_waits_for_a_hold_in_flight(pg_store):
    # hold() and release() from two threads: whichever runs first, the lock ends up free.
    key = 0x7465737405
    for _ in range(20):
        a = pg_store.leader_lock(key)
        t = threading.Thread(target=a.hold)
        t.start()
        a.release()
        t.join()
        b = pg_store.leader_lock(key)
        try:
            assert b.hold() is True
        finally:
            b.release()


def test_ping_raises_a_transient_error_when_postgres_is_down():
    s = PostgresJobStore.connect("postgresql://postgres@127.0.0.1:1/none", migrate=False, connect_timeout_s=1)
    try:
        with pytest.raises(sa.exc.OperationalError) as e:
            s.ping()
        assert is_transient_db_error(e.value)
    finally:
        s.close()


@pytest.mark.parametrize("bad", ["a\x00b", {"k\x00": 1}, ["x\ud800y"]])
def test_a_result_the_store_cannot_hold_is_refused_and_the_attempt_stays_open(store, bad):
    submit(store)
    (j,) = store.claim(app_id="a", owner="r1", limit=1, lease_s=30, max_in_flight=5)
    with pytest.raises(ResultNotStorable) as e:
        store.complete(job_id=j.id, owner="r1", attempt=1, result={"text": bad}, backend="x")
    assert not store.is_transient(e.value)  # trying again cannot help
    if bad != ["x\ud800y"]:  # the wording the dispatcher records (a lone surrogate gets another)
        assert str(e.value) == "UntranslatableCharacter: unsupported Unicode escape sequence"
    assert store.get(j.id).status == JobStatus.running
    after = store.fail_attempt(job_id=j.id, owner="r1", attempt=1, retryable=False,
                               error=f"the result could not be stored: {e.value}")
    assert after.status == JobStatus.failed and after.result is None


def test_is_transient_tells_an_outage_from_a_bug(store):
    assert store.is_transient(StoreUnavailable("down"))
    assert not store.is_transient(ValueError("bad input"))
    assert not store.is_transient(TransitionError(uuid.uuid4(), "succeeded", "complete"))


# -- retention -----------------------------------------------------------------------------------

def finished(store, app, how="succeeded"):
    job = submit(store, app=app, max_attempts=1)
    if how == "cancelled":
        store.cancel(job.id)
        return job
    (c,) = store.claim(app_id=app, owner="r1", limit=1, lease_s=30, max_in_flight=10)
    if how == "succeeded":
        store.complete(job_id=job.id, owner="r1", attempt=c.claims, result={"ok": True}, backend="b")
    else:
        store.fail_attempt(job_id=job.id, owner="r1", attempt=c.claims, error="boom", retryable=False)
    return job


def age_finished(store, seconds):
    """Every finished job `seconds` older (the memory store's clock moves instead)."""
    if is_memory(store):
        store.clock.advance(seconds)
        return
    with store.engine.begin() as c:
        c.execute(sa.text("UPDATE jobs SET finished_at = finished_at - make_interval(secs => :s) "
                          "WHERE finished_at IS NOT NULL"), {"s": seconds})


def test_prune_deletes_only_terminal_jobs_past_the_age_oldest_first_in_batches(store):
    old = [finished(store, "a", how) for how in ("succeeded", "failed", "cancelled", "succeeded")]
    queued = submit(store, app="q")
    running = submit(store, app="b")
    store.claim(app_id="b", owner="r1", limit=1, lease_s=3600, max_in_flight=10)
    age_finished(store, 2 * 86_400)
    young = finished(store, "a")
    assert store.prunable(older_than_s=86_400) == {"a": 4}
    first = store.prune(older_than_s=86_400, limit=3)
    assert {p.job_id for p in first} == {j.id for j in old[:3]}  # the oldest finished ones first
    by_id = {p.job_id: p for p in first}
    assert by_id[old[0].id].app_id == "a" and by_id[old[0].id].params == {"x": 1} and by_id[old[0].id].result == {"ok": True}
    rest = store.prune(older_than_s=86_400, limit=100)
    assert [p.job_id for p in rest] == [old[3].id]
    assert store.prune(older_than_s=86_400, limit=100) == [] and store.prunable(older_than_s=86_400) == {}
    for job in old:
        with pytest.raises(JobNotFound):
            store.get(job.id)
    assert store.get(queued.id).status == JobStatus.queued and store.get(running.id).status == JobStatus.running
    assert store.get(young.id).status == JobStatus.succeeded


def test_one_pruner_at_a_time_and_intake_never_waits_on_it(pg_store, database_url):
    job = finished(pg_store, "p")
    age_finished(pg_store, 86_400)
    eng = create_engine(database_url)
    with eng.begin() as other:  # another replica in the middle of a prune batch
        other.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": 0x6770757072})
        other.execute(sa.text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job.id})
        assert pg_store.prune(older_than_s=3600, limit=10) is None
        t0 = time.monotonic()
        submit(pg_store, app="p")  # intake goes on meanwhile
        assert time.monotonic() - t0 < 2
    eng.dispose()
    assert [p.job_id for p in pg_store.prune(older_than_s=3600, limit=10)] == [job.id]


def test_prune_scans_the_finished_index(pg_store):
    with pg_store.engine.begin() as c:
        c.execute(sa.text("SET LOCAL enable_seqscan = off"))  # tiny table: ask what plan the index allows
        plan = "\n".join(c.execute(sa.text(f"EXPLAIN DELETE FROM jobs WHERE id IN ({PostgresJobStore.PRUNE_PICK})"),
                                    {"age": 30 * 86_400, "n": 500}).scalars())
    assert "jobs_finished_idx" in plan, plan


# -- migrations on a live jobs table -----------------------------------------------------------------

JOB_INDEXES = ("jobs_active_idx", "jobs_succeeded_finished_idx", "jobs_finished_idx", "jobs_owner_idx",
               "jobs_owner_active_idx", "jobs_webhook_due_idx")


@pytest.fixture
def blank_database_url(backend):
    """An empty database (no schema), to migrate from the start."""
    name = f"gpu_orch_blank_{uuid.uuid4().hex[:12]}"
    with backend.admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield backend.url_for(name)
    backend.drop(name)


def fill_jobs(engine, n: int) -> None:
    """n jobs, as the schema of migration 0002 has them (terminal, eight apps)."""
    with engine.begin() as c:
        c.execute(sa.text(
            "INSERT INTO jobs (id, app_id, status, finished_at, started_at) "
            "SELECT gen_random_uuid(), 'app' || (i % 8), 'succeeded', now() - i * interval '1 s', "
            "now() - i * interval '1 s' - interval '2 s' FROM generate_series(1, :n) AS i"), {"n": n})


def index_validity(engine) -> dict[str, bool]:
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                 "WHERE c.relname = ANY(:names)"), {"names": list(JOB_INDEXES)}).all()
    return dict(rows)


def test_job_index_builds_do_not_block_intake(blank_database_url):
    """A writer holds its lock on jobs (an open transaction that updated it), so the migration's
    index build has to wait for it; while it waits, a submit (an INSERT) goes through. A plain
    CREATE INDEX would queue its SHARE lock behind the writer, and the submit behind that."""
    engine = create_engine(blank_database_url)
    run_migrations(engine, target="0002")
    fill_jobs(engine, 20_000)
    writer = engine.connect()
    writer.execute(sa.text("UPDATE jobs SET priority = priority WHERE false"))  # ROW EXCLUSIVE, held
    migrating = threading.Thread(target=run_migrations, args=(engine,))
    migrating.start()
    try:
        with engine.connect() as c:
            deadline = time.monotonic() + 60
            while not c.execute(sa.text("SELECT count(*) FROM pg_stat_progress_create_index "
                                        "WHERE phase = 'waiting for writers before build'")).scalar():
                assert time.monotonic() < deadline, "the index build never waited for the open writer"
                c.rollback()
                time.sleep(0.05)
            c.rollback()
            c.execute(sa.text("SET statement_timeout = '20s'"))  # a blocked submit fails the test, not hangs it
            c.execute(sa.text("INSERT INTO jobs (id, app_id) VALUES (gen_random_uuid(), 'live')"))
            c.commit()
            # The build is still waiting for the writer: the submit did not wait for the build.
            assert c.execute(sa.text("SELECT count(*) FROM pg_stat_progress_create_index")).scalar() == 1
    finally:
        writer.rollback()
        writer.close()
        migrating.join(timeout=120)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT version_num FROM gpu_orch_alembic_version")).scalar() == "0007"
        assert c.execute(sa.text("SELECT count(*) FROM jobs WHERE app_id = 'live'")).scalar() == 1
    assert index_validity(engine) == {name: True for name in JOB_INDEXES}
    engine.dispose()


def test_an_invalid_index_a_failed_build_left_is_built_again(blank_database_url):
    engine = create_engine(blank_database_url)
    run_migrations(engine, target="0002")
    fill_jobs(engine, 100)
    # A concurrent build that fails (here: duplicates under UNIQUE) leaves an INVALID index behind.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        with pytest.raises(sa.exc.IntegrityError):
            c.execute(sa.text("CREATE UNIQUE INDEX CONCURRENTLY jobs_active_idx ON jobs (app_id)"))
    assert index_validity(engine) == {"jobs_active_idx": False}
    run_migrations(engine)
    assert index_validity(engine) == {name: True for name in JOB_INDEXES}
    with engine.connect() as c:
        (definition,) = c.execute(sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'jobs_active_idx'")).one()
    assert "UNIQUE" not in definition and "WHERE (status = ANY" in definition  # the migration's own index
    engine.dispose()


def test_a_migration_stopped_during_its_index_build_runs_again(blank_database_url):
    """0004 commits its columns before building its index: stopped then, it starts over cleanly."""
    engine = create_engine(blank_database_url)
    run_migrations(engine, target="0003")
    with engine.begin() as c:
        c.execute(sa.text("ALTER TABLE jobs ADD COLUMN route text, ADD COLUMN route_reason text, "
                          "ADD COLUMN cloud_ref jsonb, ADD COLUMN gpu_seconds float, ADD COLUMN cost_usd float, "
                          "ADD COLUMN usage jsonb"))
    run_migrations(engine)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT version_num FROM gpu_orch_alembic_version")).scalar() == "0007"
    assert index_validity(engine) == {name: True for name in JOB_INDEXES}
    engine.dispose()
