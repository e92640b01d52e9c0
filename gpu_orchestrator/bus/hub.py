"""One blocking Redis read for every event stream a router replica's subscribers follow.

A subscriber (an SSE client, a `Prefer: wait` submit, an OpenAI call waiting for its job) used to
hold a Redis connection in XREAD BLOCK for as long as it waited: 500 of them were 500 connections,
more than the client pool holds (100), and the rest failed over to polling Postgres. Here one reader
task per replica runs `XREAD BLOCK` over all followed streams at once and hands each subscriber the
entries after its own last id (its history too). The read also watches a wake stream of its own: a
new subscriber adds an entry there, so the read in flight returns at once and the next one includes
the new stream (no subscriber waits out a block).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

log = logging.getLogger("gpu_orchestrator.events")

WAKE_PREFIX = "gpu-orch:hub:"


def stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(eq=False)
class _Sub:
    key: str
    last: str
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class StreamHub:
    """`read(streams, block_ms)`: one XREAD (key -> after id), returning [(key, [(id, fields), ...])]
    or None; it raises what Redis raises. `decode(id, fields)` makes an Event. `wake(key)` appends
    an entry to the stream `key` (best effort)."""

    def __init__(self, read: Callable[[dict[str, str], int | None], Awaitable[Any]],
                 decode: Callable[[Any, Any], Any], wake: Callable[[str], Awaitable[Any]], *,
                 block_ms: int = 1_000, count: int = 100):
        self.read = read
        self.decode = decode
        self.wake = wake
        self.block_ms = block_ms
        self.count = count
        self.wake_key = f"{WAKE_PREFIX}{uuid.uuid4().hex}"
        self._wake_last = "0-0"
        self._subs: dict[str, set[_Sub]] = {}
        self._task: asyncio.Task | None = None
        self._reading = False  # a blocking read is in flight

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subs.values())

    async def tail(self, key: str, after: str, *, idle_ms: int) -> AsyncIterator[Any]:
        """Events of stream `key` after `after`; None after each idle_ms without one. Redis errors of
        the shared read are raised here. Close it (aclose) when done: that ends the subscription."""
        sub = _Sub(key, after)
        self._subs.setdefault(key, set()).add(sub)
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run())
        elif self._reading:
            try:  # the read in flight does not follow this stream yet: end it now
                await self.wake(self.wake_key)
            except Exception as e:  # it ends within block_ms anyway
                log.debug("hub wake failed: %s", e)
        getter: asyncio.Future | None = None  # kept across idle rounds: an entry is never dropped by a timeout
        try:
            while True:
                if getter is None:
                    getter = asyncio.ensure_future(sub.queue.get())
                done, _ = await asyncio.wait({getter}, timeout=idle_ms / 1000)
                if not done:
                    yield None
                    continue
                item, getter = getter.result(), None
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if getter is not None:
                getter.cancel()
            subs = self._subs.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[key]

    async def _run(self) -> None:
        while self._subs:
            streams = {key: min((s.last for s in subs), key=stream_id) for key, subs in self._subs.items()}
            streams[self.wake_key] = self._wake_last
            self._reading = True
            try:
                resp = await self.read(streams, self.block_ms)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # every subscriber hears it (and follows the job row meanwhile)
                for subs in list(self._subs.values()):
                    for s in subs:
                        s.queue.put_nowait(e)
                await asyncio.sleep(0.05)  # they leave; the ones that come back retry
                continue
            finally:
                self._reading = False
            for key, entries in resp or []:
                key = key.decode() if isinstance(key, bytes) else key
                if key == self.wake_key:
                    self._wake_last = self.decode(entries[-1][0], entries[-1][1]).id
                    continue
                for entry_id, fields in entries:
                    ev = self.decode(entry_id, fields)
                    at = stream_id(ev.id)
                    for s in list(self._subs.get(key, ())):
                        if at > stream_id(s.last):
                            s.last = ev.id
                            s.queue.put_nowait(ev)
        self._task = None
