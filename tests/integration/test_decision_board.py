"""The arbiter's decision board on real Redis: the decision expires with its TTL (a dead leader's
decision goes), the measured load times do not (the next leader, or one after a restart of every
router, starts from them)."""

from __future__ import annotations

import asyncio
import time
import uuid

import redis.asyncio as aredis

from gpu_orchestrator.bus.decisions import RedisDecisionBoard, Snapshot


def test_the_decision_expires_and_the_load_times_stay(redis_url):
    async def go():
        r = aredis.from_url(redis_url)
        board = RedisDecisionBoard(r, f"test-{uuid.uuid4().hex[:8]}", ttl_s=1)
        try:
            await board.publish(Snapshot(ts=time.time(), leader="router-a", targets={"echo-a": 1},
                                         dispatchable=["echo-a"], draining=[], reasons=[]))
            assert (await board.read()).dispatchable == ["echo-a"]
            await board.remember_load("echo-a", 3.25)
            await board.remember_load("echo-b", 12.0)
            await board.remember_load("echo-a", 2.75)  # the latest measurement wins
            deadline = time.monotonic() + 10
            while await board.read() is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return await board.read(), await board.loads()
        finally:
            await r.delete(board.key, board.loads_key)
            await r.aclose()

    decision, loads = asyncio.run(go())
    assert decision is None
    assert loads == {"echo-a": 2.75, "echo-b": 12.0}
