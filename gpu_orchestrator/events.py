"""Job events over Redis Streams: progress from model replicas, status changes from the router.

Redis carries what may be lost (live progress); Postgres keeps the job's state. One stream per job,
capped and expiring, so SSE clients can resume with Last-Event-ID (= the stream entry id).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

import redis
import redis.asyncio as aredis

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def stream_key(job_id: uuid.UUID | str) -> str:
    return f"gpu-orch:job:{job_id}:events"


def cancel_key(job_id: uuid.UUID | str) -> str:
    return f"gpu-orch:job:{job_id}:cancel"


@dataclass(frozen=True)
class Event:
    id: str  # Redis stream entry id, e.g. "1732690000000-0"
    type: str  # status | progress | token | log
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.type == "status" and self.data.get("status") in TERMINAL_STATUSES

    def to_sse(self) -> str:
        return f"id: {self.id}\nevent: {self.type}\ndata: {json.dumps(self.data, default=str)}\n\n"


def _decode(entry_id: Any, fields: dict[Any, Any]) -> Event:
    def s(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else v

    f = {s(k): s(v) for k, v in fields.items()}
    return Event(id=s(entry_id), type=f.get("type", "log"), data=json.loads(f.get("data", "{}")))


class EventBus:
    """Synchronous publisher/reader, used by model replicas and the store-side code."""

    def __init__(self, url: str, *, maxlen: int = 10_000, ttl_s: int = 86_400):
        self.r = redis.Redis.from_url(url)
        self.maxlen = maxlen
        self.ttl_s = ttl_s

    def publish(self, job_id: uuid.UUID | str, type: str, **data: Any) -> str:
        key = stream_key(job_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.xadd(key, {"type": type, "data": json.dumps(data, default=str)}, maxlen=self.maxlen, approximate=True)
        pipe.expire(key, self.ttl_s)
        return pipe.execute()[0].decode()

    def read(self, job_id: uuid.UUID | str, after: str = "0-0") -> list[Event]:
        return [_decode(i, f) for i, f in self.r.xrange(stream_key(job_id), min=f"({after}" if after != "0-0" else "-")]

    def request_cancel(self, job_id: uuid.UUID | str) -> None:
        self.r.set(cancel_key(job_id), "1", ex=self.ttl_s)

    def is_cancelled(self, job_id: uuid.UUID | str) -> bool:
        return bool(self.r.exists(cancel_key(job_id)))

    def ping(self) -> bool:
        return bool(self.r.ping())

    def close(self) -> None:
        self.r.close()


class AsyncEventBus:
    """Asyncio twin for the router: publishes status events and tails streams for SSE."""

    def __init__(self, url: str, *, maxlen: int = 10_000, ttl_s: int = 86_400):
        self.r = aredis.Redis.from_url(url)
        self.maxlen = maxlen
        self.ttl_s = ttl_s

    async def publish(self, job_id: uuid.UUID | str, type: str, **data: Any) -> str:
        key = stream_key(job_id)
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.xadd(key, {"type": type, "data": json.dumps(data, default=str)}, maxlen=self.maxlen, approximate=True)
            pipe.expire(key, self.ttl_s)
            res = await pipe.execute()
        return res[0].decode()

    async def request_cancel(self, job_id: uuid.UUID | str) -> None:
        await self.r.set(cancel_key(job_id), "1", ex=self.ttl_s)

    async def tail(self, job_id: uuid.UUID | str, after: str = "0-0", *, block_ms: int = 5_000) -> AsyncIterator[Event | None]:
        """Yield events after `after`; yields None on each idle block so callers can send keep-alives
        and re-check the job in Postgres (the terminal event may have been lost with Redis)."""
        key = stream_key(job_id)
        last = after
        while True:
            resp = await self.r.xread({key: last}, block=block_ms, count=100)
            if not resp:
                yield None
                continue
            for _, entries in resp:
                for entry_id, fields in entries:
                    ev = _decode(entry_id, fields)
                    last = ev.id
                    yield ev

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    async def close(self) -> None:
        await self.r.aclose()
