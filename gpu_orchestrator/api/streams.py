"""Long-lived responses (SSE, streamed chat): admission per replica, and the SSE wire format."""

from __future__ import annotations

import time
from typing import AsyncIterator

from gpu_orchestrator.api.errors import ApiError
from gpu_orchestrator.api.limits import Limits
from gpu_orchestrator.service.jobs import Event

# An event stream ends after limits.max_stream_s with a `retry:` hint; clients resume with Last-Event-ID.
SSE_RETRY_MS = 1000
# Beyond limits.max_streams open streams, new ones get 503 with this Retry-After.
STREAMS_RETRY_AFTER_S = 5


class Streams:
    def __init__(self, limits: Limits):
        self.limits = limits
        self.open = 0

    def admit(self) -> None:
        if self.open >= self.limits.max_streams:
            raise ApiError(503, "too_many_streams", f"this router replica serves {self.limits.max_streams} event "
                           f"streams at most; retry shortly", headers={"Retry-After": str(STREAMS_RETRY_AFTER_S)})

    async def counted(self, gen: AsyncIterator[str]) -> AsyncIterator[str]:
        self.open += 1
        try:
            async for chunk in gen:
                yield chunk
        finally:
            self.open -= 1
            await gen.aclose()  # type: ignore[attr-defined]


async def sse(events: AsyncIterator[Event | None], max_stream_s: float) -> AsyncIterator[str]:
    """Server-Sent Events from a job's `follow`: keep-alive comments on idle, and after
    max_stream_s a `retry:` hint and the end (the client resumes with Last-Event-ID)."""
    ends_at = time.monotonic() + max_stream_s
    try:
        async for ev in events:
            if ev is None:
                yield ": keep-alive\n\n"
            else:
                yield ev.to_sse()
                if ev.terminal:
                    return
            if time.monotonic() > ends_at:
                yield (f"retry: {SSE_RETRY_MS}\n: stream time limit ({max_stream_s:g} s) reached; "
                       f"reconnect with Last-Event-ID\n\n")
                return
    finally:
        await events.aclose()  # type: ignore[attr-defined]
