"""One blocking Redis read for every event stream a router replica's subscribers follow.

A subscriber (an SSE client, a `Prefer: wait` submit, an OpenAI call waiting for its job) used to
hold a Redis connection in XREAD BLOCK for as long as it waited: 500 of them were 500 connections,
more than the client pool holds (100), and the rest failed over to polling Postgres. Here one reader
task per replica runs `XREAD BLOCK` over all followed streams at once and hands each subscriber the
entries after its own last id (its history too). A new subscriber joins at the reader's next round,
within `block_ms`: the wait for an event is bounded by that, not by one read per subscriber.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

log = logging.getLogger("gpu_orchestrator.events")


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
    or None; it raises what Redis raises. `decode(id, fields)` makes an Event."""

    def __init__(self, read: Callable[[dict[str, str], int | None], Awaitable[Any]],
                 decode: Callable[[Any, Any], Any], *, block_ms: int = 50, count: int = 100):
        self.read = read
        self.decode = decode
        self.block_ms = block_ms
        self.count = count
        self._subs: dict[str, set[_Sub]] = {}
        self._task: asyncio.Task | None = None

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subs.values())

    async def tail(self, key: str, after: str, *, idle_ms: int) -> AsyncIterator[Any]:
        """Events of stream `key` after `after`; None after each idle_ms without one. Redis errors of
        the shared read are raised here."""
        sub = _Sub(key, after)
        self._subs.setdefault(key, set()).add(sub)
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run())
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
            try:
                resp = await self.read(streams, self.block_ms)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # every subscriber hears it (and follows the job row meanwhile)
                for subs in list(self._subs.values()):
                    for s in subs:
                        s.queue.put_nowait(e)
                await asyncio.sleep(self.block_ms / 1000)  # they leave; the ones that come back retry
                continue
            for key, entries in resp or []:
                key = key.decode() if isinstance(key, bytes) else key
                for entry_id, fields in entries:
                    ev = self.decode(entry_id, fields)
                    at = stream_id(ev.id)
                    for s in list(self._subs.get(key, ())):
                        if at > stream_id(s.last):
                            s.last = ev.id
                            s.queue.put_nowait(ev)
        self._task = None
