"""Job event streams and cancel flags on real Redis (the machine's and the embedded one)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from gpu_orchestrator.bus.events import AsyncEventBus, EventBus, EventBusDown, follow, reason
from tests.integration.router_harness import TcpProxy, redis_upstream


def test_publish_read_resume_and_cap(redis_url):
    bus = EventBus(redis_url, maxlen=50, ttl_s=60)
    job = uuid.uuid4()
    ids = [bus.publish(job, "progress", step=i) for i in range(5)]
    bus.publish(job, "status", status="succeeded", result={"x": 1})
    events = bus.read(job)
    assert [e.data.get("step") for e in events[:5]] == [0, 1, 2, 3, 4]
    assert events[-1].terminal and not events[0].terminal
    assert [e.id for e in bus.read(job, after=ids[2])] == [e.id for e in events[3:]]
    assert 0 < bus.r.ttl(f"gpu-orch:job:{job}:events") <= 60
    for i in range(500):
        bus.publish(job, "progress", step=i)
    assert len(bus.read(job)) < 200  # capped (approximate trimming)
    bus.close()


def test_a_started_job_announces_queued_and_running_in_one_go_and_the_ttl_is_set_by_first_and_last(redis_url):
    from gpu_orchestrator.bus.events import stream_key
    from gpu_orchestrator.core.jobs import JobStatus
    from gpu_orchestrator.service.transitions import CountingMetrics, Transitions

    async def go():
        bus = AsyncEventBus(redis_url)
        t = Transitions(bus, metrics := CountingMetrics())
        job = uuid.uuid4()
        await t.announce_started(job, "a", attempt=1, router="r1")
        ttl_first = await bus.r.ttl(stream_key(job))
        await bus.r.persist(stream_key(job))
        await t.announce(job, "a", JobStatus.running, attempt=2)  # a middle event leaves the TTL alone
        ttl_middle = await bus.r.ttl(stream_key(job))
        await t.announce(job, "a", JobStatus.succeeded, attempt=2)
        ttl_last = await bus.r.ttl(stream_key(job))
        got = [e async for e in _until_terminal(bus.tail(job, block_ms=100))]
        await bus.close()
        return ttl_first, ttl_middle, ttl_last, got, metrics

    ttl_first, ttl_middle, ttl_last, got, metrics = asyncio.run(go())
    assert ttl_first > 0 and ttl_middle == -1 and ttl_last > 0
    assert [e.data["status"] for e in got] == ["queued", "running", "running", "succeeded"]
    assert got[1].data == {"status": "running", "attempt": 1, "router": "r1"}
    assert metrics.counts == {("a", "queued", True): 1, ("a", "running", False): 2, ("a", "succeeded", False): 1}


async def _until_terminal(tail):
    async for ev in tail:
        if ev is None:
            continue
        yield ev
        if ev.terminal:
            return


def test_cancel_flag(redis_url):
    bus = EventBus(redis_url)
    job = uuid.uuid4()
    assert not bus.is_cancelled(job)
    bus.request_cancel(job)
    assert bus.is_cancelled(job)
    bus.close()


def test_async_tail_follows_live_events_and_idles(redis_url):
    async def go():
        bus = AsyncEventBus(redis_url)
        job = uuid.uuid4()
        await bus.publish(job, "status", status="queued")
        got = []

        async def producer():
            await asyncio.sleep(0.5)  # several 100 ms idle blocks first, even on a loaded machine
            await bus.publish(job, "progress", step=1)
            await bus.publish(job, "status", status="failed", error="boom")

        task = asyncio.create_task(producer())
        idles = 0
        async for ev in bus.tail(job, block_ms=100):
            if ev is None:
                idles += 1
                continue
            got.append(ev)
            if ev.terminal:
                break
        await task
        await bus.close()
        return got, idles

    got, idles = asyncio.run(go())
    assert [e.type for e in got] == ["status", "progress", "status"]
    assert got[-1].data == {"status": "failed", "error": "boom"}
    assert idles >= 1
    assert got[-1].to_sse().startswith(f"id: {got[-1].id}\nevent: status\ndata: ")


# -- Redis down or slow (a TCP proxy in front of the real server, cut or stalled) --------------------

@pytest.fixture
def proxy(redis_url):
    p = TcpProxy(redis_upstream(redis_url))
    yield p
    p.close()


def test_sync_bus_on_a_stalled_redis_times_out_then_fails_fast(proxy):
    bus = EventBus(f"redis://127.0.0.1:{proxy.port}/0", timeout_s=1.0, cooldown_s=2.0)
    job = uuid.uuid4()
    assert bus.publish(job, "progress", step=1)
    proxy.stall()
    t0 = time.monotonic()
    assert bus.try_publish(job, "progress", step=2) is None  # a timeout, not a hang
    assert time.monotonic() - t0 < 3
    t0 = time.monotonic()
    for i in range(50):  # within the cooldown: no waiting at all
        assert bus.try_publish(job, "progress", step=i) is None
    assert not bus.try_is_cancelled(job)
    assert time.monotonic() - t0 < 0.5 and bus.dropped == 51
    with pytest.raises(EventBusDown):
        bus.publish(job, "progress", step=3)
    with pytest.raises(Exception) as e:
        bus.ping()  # always tried: the health check tells the truth
    assert reason(e.value) == "timeout"
    proxy.restore()
    time.sleep(2.1)
    assert bus.publish(job, "progress", step=4) and bus.ping()
    bus.close()


def _row(state: dict):
    async def row_status():
        return state.get("row")
    return row_status


def test_follow_reports_a_gap_and_goes_on_when_redis_comes_back(proxy):
    async def go():
        bus = AsyncEventBus(f"redis://127.0.0.1:{proxy.port}/0", cooldown_s=0.2)
        job = uuid.uuid4()
        await bus.publish(job, "progress", step=1)
        got = []
        async for ev in follow(bus, job, row_status=_row({}), block_ms=200, retry_s=0.1):
            if ev is None:
                if len(got) == 1 and proxy.mode == "up":
                    proxy.cut()
                    asyncio.get_running_loop().call_later(0.8, proxy.restore)
                elif len(got) >= 2 and got[-1].type == "gap":
                    await bus.publish(job, "progress", step=2)
                    await bus.publish(job, "status", status="succeeded", result={"ok": 1})
                continue
            got.append(ev)
            if ev.terminal:
                break
        await bus.close()
        return got

    got = asyncio.run(go())
    assert [e.type for e in got] == ["progress", "gap", "progress", "status"]
    assert got[1].id == got[0].id  # a resume from the gap's id loses nothing delivered
    assert got[1].data["reason"] == "event stream unavailable" and got[1].data["since"]
    assert got[-1].data == {"status": "succeeded", "result": {"ok": 1}}


def test_follow_ends_with_the_row_status_while_redis_is_down(proxy):
    async def go():
        bus = AsyncEventBus(f"redis://127.0.0.1:{proxy.port}/0", cooldown_s=0.2)
        job = uuid.uuid4()
        ids = [await bus.publish(job, "progress", step=1)]
        state: dict = {}
        got = []
        async for ev in follow(bus, job, row_status=_row(state), block_ms=200, retry_s=0.1):
            if ev is None:
                if proxy.mode == "up":
                    proxy.cut()
                    asyncio.get_running_loop().call_later(0.5, state.__setitem__, "row", {"status": "failed", "error": "boom", "result": None})
                continue
            got.append(ev)
        await bus.close()
        return ids, got

    ids, got = asyncio.run(go())
    assert [e.type for e in got] == ["progress", "gap", "status"]
    assert got[-1].data == {"status": "failed", "error": "boom", "result": None, "source": "database"}
    assert got[-1].id == ids[0]


def test_follow_keeps_waiting_while_the_database_is_away_too(proxy):
    async def go():
        bus = AsyncEventBus(f"redis://127.0.0.1:{proxy.port}/0", cooldown_s=0.2)
        job = uuid.uuid4()
        calls = {"n": 0}

        async def row_status():
            calls["n"] += 1
            if calls["n"] < 4:
                raise ConnectionError("database down")
            return {"status": "succeeded", "result": 1, "error": None}

        proxy.cut()
        got = [ev async for ev in follow(bus, job, row_status=row_status, block_ms=200, retry_s=0.05) if ev is not None]
        await bus.close()
        return got

    got = asyncio.run(go())
    assert [e.type for e in got] == ["gap", "status"] and got[-1].data["status"] == "succeeded"


def test_hundreds_of_tails_share_one_blocking_read(redis_url):
    """Each subscriber gets exactly its stream's events after its own id, live, while the bus holds
    a couple of connections however many follow (a connection each used to exhaust the pool)."""
    import redis as redis_sync

    async def go():
        bus = AsyncEventBus(redis_url)
        jobs = [uuid.uuid4() for _ in range(300)]
        first = {j: await bus.publish(j, "status", status="queued") for j in jobs}
        got: dict[tuple, list] = {}

        async def follow(job, after, tag):
            async for ev in bus.tail(job, after, block_ms=200):
                if ev is not None:
                    got.setdefault((job, tag), []).append(ev.data)
                    if ev.terminal:
                        return

        tasks = [asyncio.create_task(follow(j, "0-0", "all")) for j in jobs]
        tasks.append(asyncio.create_task(follow(jobs[0], first[jobs[0]], "late")))  # same stream, later id
        await asyncio.sleep(1.0)
        clients = int(redis_sync.Redis.from_url(redis_url).info("clients")["connected_clients"])
        assert bus.hub.subscribers == 301
        for i, j in enumerate(jobs):
            await bus.publish(j, "progress", step=i)
            await bus.publish(j, "status", status="succeeded", result=i)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        await bus.close()
        return jobs, got, clients

    jobs, got, clients = asyncio.run(go())
    for i, j in enumerate(jobs):
        assert got[(j, "all")] == [{"status": "queued"}, {"step": i}, {"status": "succeeded", "result": i}]
    assert got[(jobs[0], "late")] == [{"step": 0}, {"status": "succeeded", "result": 0}]
    assert clients < 20, clients  # this test's bus: a publisher connection and the shared reader's


def test_a_new_tail_is_served_at_once_and_a_closed_one_leaves(redis_url):
    """A tail that joins while the shared read blocks on other streams gets its events without
    waiting out the block (the hub wakes its read); closing a tail ends its subscription."""
    import time as _time

    async def go():
        bus = AsyncEventBus(redis_url)
        bus.hub.block_ms = 5_000
        busy = uuid.uuid4()
        keep = bus.tail(busy, block_ms=5_000)  # holds the shared read in a long block
        first = asyncio.ensure_future(keep.__anext__())
        await asyncio.sleep(0.3)
        waits = []
        for _ in range(3):
            job = uuid.uuid4()
            await bus.publish(job, "status", status="succeeded")
            t0 = _time.monotonic()
            tail = bus.tail(job, block_ms=5_000)
            ev = await tail.__anext__()
            waits.append(_time.monotonic() - t0)
            assert ev.terminal
            await tail.aclose()
        left = bus.hub.subscribers
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await keep.aclose()
        await bus.close()
        return waits, left, bus.hub.subscribers

    waits, left, after = asyncio.run(go())
    assert max(waits) < 1.0, waits  # not the 5 s block
    assert left == 1 and after == 0
