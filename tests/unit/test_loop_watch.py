"""LoopWatch names the call that holds the event loop (a blocking call on a router replica's loop
stalls every request there)."""

from __future__ import annotations

import asyncio
import logging
import time

from gpu_orchestrator.root.loop_watch import LoopWatch
from tests.helpers import until


def a_blocking_call(seconds: float) -> None:
    time.sleep(seconds)  # what a sync client call on the loop does


def test_a_blocked_loop_is_reported_once_with_the_blocking_call(caplog):
    async def main():
        watch = LoopWatch(stall_s=0.2, every_s=0.05)
        watch.start()
        try:
            await asyncio.sleep(0.2)
            a_blocking_call(0.8)
            await until(lambda: any("was held for" in r.message for r in caplog.records), 5, "the stall's end")
        finally:
            watch.stop()
        return watch

    with caplog.at_level(logging.WARNING, logger="gpu_orchestrator.router"):
        watch = asyncio.run(main())
    assert watch.stalls == 1
    held = [r.message for r in caplog.records if "is held" in r.message]
    assert len(held) == 1 and "a_blocking_call" in held[0] and "time.sleep" in held[0]
    ended = [r.message for r in caplog.records if "was held for" in r.message]
    assert len(ended) == 1 and 0.4 < float(ended[0].split("for ")[1].split(" s")[0]) < 1.5


def test_a_busy_loop_that_yields_is_not_a_stall(caplog):
    async def main():
        watch = LoopWatch(stall_s=0.2, every_s=0.05)
        watch.start()
        try:
            end = time.monotonic() + 0.6
            while time.monotonic() < end:
                a_blocking_call(0.01)
                await asyncio.sleep(0)
        finally:
            watch.stop()
        return watch

    with caplog.at_level(logging.WARNING, logger="gpu_orchestrator.router"):
        assert asyncio.run(main()).stalls == 0
