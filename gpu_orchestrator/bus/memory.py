"""An in-process event bus with AsyncEventBus's surface, for unit tests of the middle (no Redis).

Streams keep Redis's id order ("<ms>-<seq>", strictly increasing per bus), `tail` yields None on an
idle block like XREAD BLOCK does, and `down = True` (or `with bus.outage():`) makes every call raise
a redis ConnectionError, one of bus.events.REDIS_ERRORS, as a Redis outage does. `published` records
every delivered event in order, for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import defaultdict
from typing import Any, AsyncIterator, Iterator

import redis

from gpu_orchestrator.bus.events import MAX_BLOCK_MS, Event, cancel_key


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class MemoryEventBus:
    def __init__(self) -> None:
        self.streams: dict[str, list[Event]] = defaultdict(list)
        self.values: dict[str, str] = {}
        self.published: list[tuple[str, Event]] = []  # (job id, event), every delivered event in order
        self.down = False
        self.closed = False
        self._last = (0, 0)
        self._changed: asyncio.Condition | None = None  # made in the running loop, on first use

    # -- the outage switch ------------------------------------------------------------------------
    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.down = True
        try:
            yield
        finally:
            self.down = False

    def _check(self) -> None:
        if self.down:
            raise redis.exceptions.ConnectionError("redis unavailable (simulated outage)")

    def _cond(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def _next_id(self) -> str:
        ms = int(time.time() * 1000)
        last_ms, last_seq = self._last
        self._last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return f"{self._last[0]}-{self._last[1]}"

    # -- AsyncEventBus's surface ------------------------------------------------------------------
    async def publish(self, job_id: uuid.UUID | str, type: str, **data: Any) -> str:
        return (await self.publish_many(job_id, [(type, data)]))[0]

    async def publish_many(self, job_id: uuid.UUID | str, events: list[tuple[str, dict[str, Any]]], *,
                           expire: bool = True) -> list[str]:
        self._check()
        ids = []
        for type, data in events:
            # Through JSON as over Redis: what a subscriber gets back is what the real bus would give.
            ev = Event(id=self._next_id(), type=type, data=json.loads(json.dumps(data, default=str)))
            self.streams[str(job_id)].append(ev)
            self.published.append((str(job_id), ev))
            ids.append(ev.id)
        cond = self._cond()
        async with cond:
            cond.notify_all()
        return ids

    async def try_publish(self, job_id: uuid.UUID | str, type: str, **data: Any) -> str | None:
        try:
            return await self.publish(job_id, type, **data)
        except redis.exceptions.RedisError:
            return None

    async def request_cancel(self, job_id: uuid.UUID | str) -> None:
        self._check()
        self.values[cancel_key(job_id)] = "1"

    def is_cancelled(self, job_id: uuid.UUID | str) -> bool:
        return cancel_key(job_id) in self.values

    async def forget(self, job_ids: list[uuid.UUID]) -> int:
        self._check()
        gone = 0
        for j in job_ids:
            gone += self.streams.pop(str(j), None) is not None
            gone += self.values.pop(cancel_key(j), None) is not None
        return gone

    async def get_value(self, key: str) -> str | None:
        self._check()
        return self.values.get(key)

    async def set_value(self, key: str, value: str, ttl_s: int) -> None:
        self._check()
        self.values[key] = value  # no expiry: tests do not outlive a TTL

    def read(self, job_id: uuid.UUID | str, after: str = "0-0") -> list[Event]:
        """The job's events after `after` (no outage check: for assertions)."""
        return [e for e in self.streams.get(str(job_id), []) if _order(e.id) > _order(after)]

    async def tail(self, job_id: uuid.UUID | str, after: str = "0-0", *,
                   block_ms: int = 5_000) -> AsyncIterator[Event | None]:
        """Events after `after`; None after each `block_ms` without one. Raises while down."""
        last = after
        block_s = max(1, min(block_ms, MAX_BLOCK_MS)) / 1000
        while True:
            self._check()
            new = self.read(job_id, last)
            if not new:
                cond = self._cond()
                async with cond:
                    try:
                        await asyncio.wait_for(cond.wait(), block_s)
                    except asyncio.TimeoutError:
                        pass
                self._check()
                new = self.read(job_id, last)
                if not new:
                    yield None
                    continue
            for ev in new:
                last = ev.id
                yield ev

    async def ping(self) -> bool:
        self._check()
        return True

    async def close(self) -> None:
        self.closed = True

    # -- for assertions ---------------------------------------------------------------------------
    def events(self, job_id: uuid.UUID | str | None = None, type: str | None = None) -> list[Event]:
        return [e for j, e in self.published
                if (job_id is None or j == str(job_id)) and (type is None or e.type == type)]

    def statuses(self, job_id: uuid.UUID | str | None = None) -> list[str]:
        """The `status` of every status event (of one job, or all), in order."""
        return [e.data.get("status") for e in self.events(job_id, "status")]
