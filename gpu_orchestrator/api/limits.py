"""The API's limits, from create_app's arguments. Mutable on purpose: the app reads them per
request, so a test (or an operator's hook) may tighten them on a running app."""

from __future__ import annotations

from dataclasses import dataclass

from gpu_orchestrator.core.config import RouterSpec


@dataclass
class Limits:
    max_body_bytes: int = 1_048_576
    max_upload_bytes: int = 200 * 1_048_576
    max_streams: int = 500  # open SSE / streamed chat responses per app (router replica)
    max_stream_s: float = 1800.0  # an event stream ends after this long; clients resume

    @classmethod
    def from_config(cls, router: RouterSpec) -> "Limits":
        # Streams default to half the replica's max_ongoing_requests, so they never starve submits.
        return cls(max_body_bytes=router.max_body_bytes, max_upload_bytes=router.max_upload_bytes,
                   max_streams=router.max_streams or max(1, router.max_ongoing_requests // 2),
                   max_stream_s=router.max_stream_s)
