"""The retention loop on the in-memory store and bus: old finished jobs go by themselves, in
batches, with their artifacts and streams; young, queued and running ones stay; a store that is
away skips a round, not the loop."""

from __future__ import annotations

import asyncio

from gpu_orchestrator.store.artifacts import ArtifactStore
from gpu_orchestrator.bus.memory import MemoryEventBus
from gpu_orchestrator.core.jobs import JobStatus
from gpu_orchestrator.core.artifact_refs import artifact_uris
from gpu_orchestrator.service.retention import DAY_S, Retention
from gpu_orchestrator.store.memory import ManualClock, MemoryJobStore


def finish(store, app, params=None, result=None):
    job, _ = store.submit(app_id=app, params=params or {}, max_attempts=1)
    (c,) = store.claim(app_id=app, owner="r", limit=1, lease_s=60, max_in_flight=10)
    store.complete(job_id=job.id, owner="r", attempt=c.claims, result=result or {}, backend="b")
    return job


def test_artifact_uris_are_found_anywhere_in_params_and_results():
    value = {"a": "artifact://x/1/a.png", "b": [{"c": "artifact://y/2/b.wav"}, "text"], "d": "artifact://pending/z",
             "e": "https://example.com/artifact://no"}
    assert sorted(artifact_uris(value)) == ["artifact://x/1/a.png", "artifact://y/2/b.wav"]


def test_the_loop_prunes_old_finished_jobs_with_their_files_and_streams(tmp_path):
    store, bus = MemoryJobStore(clock=ManualClock()), MemoryEventBus()
    art = ArtifactStore(str(tmp_path))
    uris = [art.put(b"png", prefix="outputs", name=f"{i}.png") for i in range(5)]
    old = [finish(store, "img", {"n": i}, {"images": [uris[i]]}) for i in range(5)]
    queued, _ = store.submit(app_id="q", params={}, max_attempts=1)

    async def go():
        for j in old:
            await bus.publish(j.id, "status", status="succeeded")
        store.clock.advance(31 * DAY_S)
        young = finish(store, "img")
        r = Retention(store=store, artifacts=art, streams=bus, retention_days=30, batch=2, interval_s=0.05)
        r.start()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if r.last is not None:
                break
        await r.stop()
        return r.last, young

    report, young = asyncio.run(go())
    assert (report.jobs, report.batches, report.artifacts, report.streams) == (5, 3, 5, 5)
    assert report.by_app == {"img": 5}
    assert all(not art.exists(u) for u in uris)
    assert not any(str(j.id) in bus.streams for j in old)
    assert store.get(queued.id).status == JobStatus.queued and store.get(young.id).status == JobStatus.succeeded


def test_a_store_away_skips_a_round(tmp_path):
    store, bus = MemoryJobStore(clock=ManualClock()), MemoryEventBus()
    finish(store, "a")
    store.clock.advance(40 * DAY_S)

    async def go():
        r = Retention(store=store, artifacts=None, streams=bus, retention_days=30, interval_s=0.05)
        store.available = False
        r.start()
        await asyncio.sleep(0.3)  # rounds fail, logged
        store.available = True
        for _ in range(100):
            await asyncio.sleep(0.05)
            if r.last is not None:
                break
        await r.stop()
        return r.last

    assert asyncio.run(go()).jobs == 1
    assert store.prunable(older_than_s=0) == {}
