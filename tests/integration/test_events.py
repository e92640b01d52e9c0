"""Job event streams and cancel flags on real Redis (the machine's and the embedded one)."""

from __future__ import annotations

import asyncio
import uuid

from gpu_orchestrator.events import AsyncEventBus, EventBus


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
            await asyncio.sleep(0.2)
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
