"""Job events over Redis Streams: progress from model replicas, status changes from the router.

Redis carries what may be lost (live progress); Postgres keeps the job's state. One stream per job,
capped and expiring, so SSE clients can resume with Last-Event-ID (= the stream entry id).

A Redis that is down or slow must never fail a job or hang a request: every client has socket
timeouts, and after a failure calls fail fast for a short cooldown (`EventBusDown`) instead of each
waiting out its own timeout. `follow` tails a job's stream and falls back to the job row while
Redis is away, saying so with a `gap` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import redis
import redis.asyncio as aredis
import redis.asyncio.retry
import redis.retry
from redis.backoff import ExponentialWithJitterBackoff

from gpu_orchestrator.bus.hub import StreamHub
from gpu_orchestrator.core.jobs import TERMINAL

log = logging.getLogger("gpu_orchestrator.bus.events")

TERMINAL_STATUSES = frozenset(s.value for s in TERMINAL)
# Everything a Redis call can raise when the server is down, slow, restarting or unreachable.
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)
DEFAULT_TIMEOUT_S = 2.0
MAX_BLOCK_MS = 5_000


def stream_key(job_id: uuid.UUID | str) -> str:
    return f"gpu-orch:job:{job_id}:events"


def cancel_key(job_id: uuid.UUID | str) -> str:
    return f"gpu-orch:job:{job_id}:cancel"


@dataclass(frozen=True)
class Event:
    id: str  # Redis stream entry id, e.g. "1732690000000-0"
    type: str  # status | progress | token | log | gap
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


class EventBusDown(redis.exceptions.ConnectionError):
    """Redis failed moments ago; the call was not tried (see _Breaker)."""

    def __init__(self, why: str):
        super().__init__(f"redis unavailable ({why})")
        self.why = why


def reason(exc: BaseException) -> str:
    """A short class of what went wrong with a connection, for logs and /healthz (never the raw text,
    which can hold hosts, paths or credentials)."""
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen and len(seen) < 8:
        seen.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(x) for x in seen).lower()
    kinds = tuple(type(x) for x in seen)
    if isinstance(exc, EventBusDown):
        return exc.why
    if any(issubclass(k, (TimeoutError, asyncio.TimeoutError, redis.exceptions.TimeoutError)) for k in kinds) \
            or "timeout" in text or "timed out" in text:
        return "timeout"
    if any(issubclass(k, (ConnectionRefusedError, FileNotFoundError)) for k in kinds) or "refused" in text \
            or "error 111" in text or "no such file" in text:  # a Unix socket nobody listens on
        return "connection refused"
    if "loading" in text or "starting up" in text or "shutting down" in text or "recovery" in text:
        return "starting up"
    if "authentication" in text or "password" in text or "auth" in text:
        return "authentication failed"
    if any(issubclass(k, (ConnectionError, redis.exceptions.ConnectionError)) for k in kinds) \
            or "connection" in text or "closed" in text or "reset" in text:
        return "connection lost"
    return "error"


class _Breaker:
    """After a failure, calls fail fast for `cooldown_s` instead of each waiting out a timeout: a Redis
    that is down or slow costs one timeout per cooldown, not one per progress event or request."""

    def __init__(self, cooldown_s: float):
        self.cooldown_s = cooldown_s
        self.down_until = 0.0
        self.why = ""

    def check(self) -> None:
        if time.monotonic() < self.down_until:
            raise EventBusDown(self.why)

    def failed(self, exc: BaseException) -> None:
        if not isinstance(exc, EventBusDown):
            self.why = reason(exc)
            self.down_until = time.monotonic() + self.cooldown_s

    def ok(self) -> None:
        self.down_until = 0.0


def client_options(timeout_s: float, *, block_ms: int = 0, sync: bool = False) -> dict[str, Any]:
    """Socket timeouts (a slow Redis is a timeout, not a hang; a blocking read gets its block time on
    top); one quick retry on a broken connection (a pooled one from before a Redis restart) but none
    on a timeout (a slow server is not helped by asking again), rather than redis-py's ten; and a
    ping on connections idle 15 s or more."""
    retry = (redis.retry.Retry if sync else aredis.retry.Retry)(
        ExponentialWithJitterBackoff(base=0.05, cap=0.5), 1, supported_errors=(redis.exceptions.ConnectionError,))
    return {
        "socket_timeout": timeout_s + block_ms / 1000,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": 15,
        "retry": retry,
    }


class EventBus:
    """Synchronous publisher/reader, used by model replicas and the store-side code."""

    def __init__(self, url: str, *, maxlen: int = 10_000, ttl_s: int = 86_400, timeout_s: float = DEFAULT_TIMEOUT_S,
                 cooldown_s: float = 1.0):
        self.r = redis.Redis.from_url(url, **client_options(timeout_s, sync=True))
        self.maxlen = maxlen
        self.ttl_s = ttl_s
        self.breaker = _Breaker(cooldown_s)
        self.dropped = 0  # events try_publish could not deliver

    def _call(self, fn: Callable[[], Any]) -> Any:
        self.breaker.check()
        try:
            out = fn()
        except REDIS_ERRORS as e:
            self.breaker.failed(e)
            raise
        self.breaker.ok()
        return out

    def publish(self, job_id: uuid.UUID | str, type: str, **data: Any) -> str:
        key = stream_key(job_id)

        def go() -> str:
            pipe = self.r.pipeline(transaction=False)
            pipe.xadd(key, {"type": type, "data": json.dumps(data, default=str)}, maxlen=self.maxlen, approximate=True)
            pipe.expire(key, self.ttl_s)
            return pipe.execute()[0].decode()

        return self._call(go)

    def try_publish(self, job_id: uuid.UUID | str, type: str, **data: Any) -> str | None:
        """publish, or None when Redis is unavailable: for progress events, which may be lost."""
        try:
            return self.publish(job_id, type, **data)
        except REDIS_ERRORS as e:
            self.dropped += 1
            if not isinstance(e, EventBusDown):
                log.warning("dropping %s event of job %s: redis %s", type, job_id, reason(e))
            return None

    def read(self, job_id: uuid.UUID | str, after: str = "0-0") -> list[Event]:
        rng = self._call(lambda: self.r.xrange(stream_key(job_id), min=f"({after}" if after != "0-0" else "-"))
        return [_decode(i, f) for i, f in rng]

    def request_cancel(self, job_id: uuid.UUID | str) -> None:
        self._call(lambda: self.r.set(cancel_key(job_id), "1", ex=self.ttl_s))

    def is_cancelled(self, job_id: uuid.UUID | str) -> bool:
        return bool(self._call(lambda: self.r.exists(cancel_key(job_id))))

    def try_is_cancelled(self, job_id: uuid.UUID | str) -> bool:
        """is_cancelled, or False while Redis is unavailable (the router also cancels the request)."""
        try:
            return self.is_cancelled(job_id)
        except REDIS_ERRORS:
            return False

    def ping(self) -> bool:
        try:
            out = bool(self.r.ping())
        except REDIS_ERRORS as e:
            self.breaker.failed(e)
            raise
        self.breaker.ok()
        return out

    def close(self) -> None:
        self.r.close()


class AsyncEventBus:
    """Asyncio twin for the router: publishes status events and tails streams for SSE."""

    def __init__(self, url: str, *, maxlen: int = 10_000, ttl_s: int = 86_400, timeout_s: float = DEFAULT_TIMEOUT_S,
                 cooldown_s: float = 1.0):
        self.r = aredis.Redis.from_url(url, **client_options(timeout_s))
        # Blocking reads (XREAD BLOCK) get their own pool whose socket timeout covers the block time.
        self._tail_r = aredis.Redis.from_url(url, **client_options(timeout_s, block_ms=MAX_BLOCK_MS))
        self.maxlen = maxlen
        self.ttl_s = ttl_s
        self.breaker = _Breaker(cooldown_s)
        self.hub = StreamHub(self._xread, _decode, self._wake)

    async def _call(self, aw: Callable[[], Awaitable[Any]]) -> Any:
        self.breaker.check()
        try:
            out = await aw()
        except REDIS_ERRORS as e:
            self.breaker.failed(e)
            raise
        self.breaker.ok()
        return out

    async def publish(self, job_id: uuid.UUID | str, type: str, **data: Any) -> str:
        return (await self.publish_many(job_id, [(type, data)]))[0]

    async def publish_many(self, job_id: uuid.UUID | str, events: list[tuple[str, dict[str, Any]]], *,
                           expire: bool = True) -> list[str]:
        """The events in order, in one round trip; their ids. `expire`: (re)set the stream's TTL,
        which its first and its last event do (a stream outlives its job's end by ttl_s)."""
        key = stream_key(job_id)

        async def go() -> list[str]:
            async with self.r.pipeline(transaction=False) as pipe:
                for type, data in events:
                    pipe.xadd(key, {"type": type, "data": json.dumps(data, default=str)}, maxlen=self.maxlen,
                              approximate=True)
                if expire:
                    pipe.expire(key, self.ttl_s)
                res = await pipe.execute()
            return [r.decode() for r in res[:len(events)]]

        return await self._call(go)

    async def try_publish(self, job_id: uuid.UUID | str, type: str, **data: Any) -> str | None:
        """publish, or None when Redis is unavailable (events are lossy; the job row is the truth)."""
        try:
            return await self.publish(job_id, type, **data)
        except REDIS_ERRORS as e:
            if not isinstance(e, EventBusDown):  # logged once per outage, not per event
                log.warning("could not publish %s event of job %s: redis %s", type, job_id, reason(e))
            return None

    async def request_cancel(self, job_id: uuid.UUID | str) -> None:
        await self._call(lambda: self.r.set(cancel_key(job_id), "1", ex=self.ttl_s))

    async def forget(self, job_ids: list[uuid.UUID]) -> int:
        """Delete the event streams and cancel flags of these jobs (retention; they also expire on
        their own after ttl_s). Returns how many keys went."""
        keys = [k for j in job_ids for k in (stream_key(j), cancel_key(j))]
        return int(await self._call(lambda: self.r.delete(*keys))) if keys else 0

    async def get_value(self, key: str) -> str | None:
        """A small lossy value (a cache entry), through the same timeouts and fail-fast as events."""
        v = await self._call(lambda: self.r.get(key))
        return v.decode() if isinstance(v, bytes) else v

    async def set_value(self, key: str, value: str, ttl_s: int) -> None:
        await self._call(lambda: self.r.set(key, value, ex=ttl_s))

    def tail(self, job_id: uuid.UUID | str, after: str = "0-0", *, block_ms: int = 5_000) -> AsyncIterator[Event | None]:
        """Yield events after `after`; yields None on each idle block so callers can send keep-alives
        and re-check the job in Postgres (the terminal event may have been lost with Redis).
        Redis errors propagate (see `follow` for a tail that survives them). Every tail of this bus
        shares one blocking read (bus/hub.py): a waiting subscriber holds no connection. Close it
        (aclose, or `contextlib.aclosing`) when done following."""
        return self.hub.tail(stream_key(job_id), after, idle_ms=max(1, min(block_ms, MAX_BLOCK_MS)))

    async def _xread(self, streams: dict[str, str], block_ms: int | None) -> Any:
        return await self._call(lambda: self._tail_r.xread(streams, block=block_ms, count=self.hub.count))

    async def _wake(self, key: str) -> None:
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.xadd(key, {"w": "1"}, maxlen=1, approximate=False)
            pipe.expire(key, 3600)  # a replica gone leaves it for an hour at most
            await pipe.execute()

    async def ping(self) -> bool:
        try:
            out = bool(await self.r.ping())
        except REDIS_ERRORS as e:
            self.breaker.failed(e)
            raise
        self.breaker.ok()
        return out

    async def close(self) -> None:
        await self.r.aclose()
        await self._tail_r.aclose()


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


async def follow(
    bus: AsyncEventBus,
    job_id: uuid.UUID | str,
    after: str = "0-0",
    *,
    row_status: Callable[[], Awaitable[dict[str, Any] | None]],
    block_ms: int = 2_000,
    retry_s: float = 1.0,
    row_check_s: float = 5.0,
) -> AsyncIterator[Event | None]:
    """A job's events until its terminal status, surviving Redis outages.

    Yields stream events, None on idle (send a keep-alive), a `gap` event when the stream comes
    back after an outage (events in between may be lost), and ends with the terminal status, taken
    from the job row (`row_status()`: {"status", "result", "error"} when the job is terminal, else
    None; it may raise while the database is away, which is treated like "not yet") when the
    terminal event itself is missing (looked for at most every row_check_s while the stream is
    idle: hundreds of waiting subscribers must not turn into as many queries a second). Events
    synthesised here carry the id of the last real event, so a client resuming with Last-Event-ID
    loses nothing that was delivered.
    """
    last = after
    down_since: str | None = None
    row_checked = time.monotonic()

    def gap() -> Event:
        return Event(id=last, type="gap", data={"reason": "event stream unavailable", "since": down_since,
                                                "detail": "events in between may have been lost"})

    async def from_row() -> Event | None:
        try:
            data = await row_status()
        except Exception as e:  # the database is away too: keep waiting; the row is the truth later
            log.warning("job %s: could not read the job row: %s", job_id, type(e).__name__)
            return None
        return None if data is None else Event(id=last, type="status", data={**data, "source": "database"})

    while True:
        try:
            # aclosing: leaving this loop (a terminal event, the caller closing us) ends the tail's
            # subscription at once, not when the garbage collector finalizes it.
            async with contextlib.aclosing(bus.tail(job_id, last, block_ms=block_ms)) as tail:
                async for ev in tail:
                    if down_since is not None:
                        yield gap()
                        down_since = None
                    if ev is not None:
                        last = ev.id
                        yield ev
                        if ev.terminal:
                            return
                        continue
                    if time.monotonic() - row_checked >= row_check_s:  # idle: the terminal event may have been lost
                        row_checked = time.monotonic()
                        end = await from_row()
                        if end is not None:
                            yield end
                            return
                    yield None
        except REDIS_ERRORS as e:
            if down_since is None:
                down_since = _now_iso()
                log.warning("job %s: event stream unavailable (redis %s); following the job row", job_id, reason(e))
        end = await from_row()
        if end is not None:
            yield gap()
            yield end
            return
        yield None
        await asyncio.sleep(retry_s)
