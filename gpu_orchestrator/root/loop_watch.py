"""Says what holds the event loop. Everything on a router replica (HTTP requests, the dispatcher,
the arbiter, Serve's own request handling) shares one loop; a blocking call on it stalls them all.
A task on the loop stamps the time; a thread checks the stamp and, once it is `stall_s` late, logs
where the loop's thread is (its stack), once per stall, and how long the stall lasted."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger("gpu_orchestrator.router")


class LoopWatch:
    def __init__(self, stall_s: float = 1.0, every_s: float = 0.5):
        self.stall_s, self.every_s = stall_s, every_s
        self.stamp = time.monotonic()
        self.stalls = 0
        self._stop = threading.Event()
        self._task: asyncio.Task | None = None
        self._loop_thread = 0

    def start(self) -> None:
        """On the loop to watch."""
        self._loop_thread = threading.get_ident()
        self._task = asyncio.get_running_loop().create_task(self._beat())
        threading.Thread(target=self._watch, name="loop-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()

    async def _beat(self) -> None:
        while True:
            self.stamp = time.monotonic()
            await asyncio.sleep(self.every_s)

    def _watch(self) -> None:
        held_since = None
        while not self._stop.wait(self.every_s):
            if self._task is not None and self._task.done():  # the loop has ended: nothing left to watch
                return
            stamp = self.stamp
            late = time.monotonic() - stamp - self.every_s
            if late > self.stall_s and held_since != stamp:
                if held_since is not None:  # the last stall ended and this one began between two looks
                    log.warning("the event loop was held for %.1f s", stamp - held_since - self.every_s)
                held_since = stamp
                self.stalls += 1
                frame = sys._current_frames().get(self._loop_thread)
                if frame is None:  # the loop's thread has ended: nothing left to watch
                    return
                where = "".join(traceback.format_stack(frame)[-15:])
                log.warning("the event loop is held (%.1f s so far; every request on this replica waits), at:\n%s",
                            late, where)
            elif held_since is not None and held_since != stamp:
                log.warning("the event loop was held for %.1f s", stamp - held_since - self.every_s)
                held_since = None
