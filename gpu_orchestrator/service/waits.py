"""A job's event stream with what a queued job waits for: a `waiting` event ("waiting for sdxl to
load (about 10 s)") whenever that changes, looked at after each event and on each idle tick. From
the decision the router already holds (no I/O): the event is not stored, and carries the id of the
last real event, so a client resuming with Last-Event-ID loses nothing."""

from __future__ import annotations

from typing import Any, AsyncIterator, Protocol

from gpu_orchestrator.bus.events import Event
from gpu_orchestrator.core.jobs import Job, JobStatus


class Waits(Protocol):
    def waiting_for(self, job: Job, status: JobStatus | None = None) -> dict[str, Any] | None: ...


async def with_waits(jobs: Waits, job: Job, events: AsyncIterator[Event | None],
                     after: str = "0-0") -> AsyncIterator[Event | None]:
    status, last, shown = job.status, after, None
    # A stream replays the job's past first: a `queued` from an hour ago says nothing of now. Waits are
    # looked at once the job's row was queued when the stream began, or once the replay has caught up.
    live = job.status == JobStatus.queued

    def changed() -> Event | None:
        nonlocal shown
        w = jobs.waiting_for(job, status) if live and status == JobStatus.queued else None
        message = w["message"] if w else None
        if message == shown:
            return None
        shown = message
        if w is None:
            return None  # it runs (or ended): its status event says so
        return Event(id=last, type="waiting", data=w)

    try:
        async for ev in events:
            if ev is None:
                live = True  # the replay has caught up (an idle tick)
            else:
                last = ev.id
                if ev.type == "status" and ev.data.get("status") in JobStatus._value2member_map_:
                    status = JobStatus(ev.data["status"])
                yield ev
                if ev.terminal:
                    return
            w = changed()
            if w is not None:
                yield w
            elif ev is None:
                yield None
    finally:
        await events.aclose()  # type: ignore[attr-defined]
