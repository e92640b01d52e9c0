"""InFlight: one attempt a dispatcher runs, keyed (job id, attempt) as its lease is, with its
backend run and the state of recording its outcome."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gpu_orchestrator.core.jobs import Job
from gpu_orchestrator.service.backends import ModelRun
from gpu_orchestrator.store.base import LeaseKey


@dataclass
class InFlight:
    job: Job
    task: asyncio.Task | None = None
    run: ModelRun | None = None  # the model backend's run, so a cancel can reach the replica
    recording: bool = False  # the outcome is in hand and being written
    write_retries: int = 0
    started: float | None = None  # monotonic time the run was handed to its backend
    ended: Job | None = None  # the row its recorded outcome left (terminal or queued again)
    announced: asyncio.Future | None = None  # its start's status events, still being published

    async def started_announced(self) -> None:
        """Before the outcome's event: the start's events come first on the job's stream."""
        if self.announced is not None:
            await asyncio.shield(self.announced)  # announce never raises; a cancel here leaves it going

    @property
    def key(self) -> LeaseKey:
        return (self.job.id, self.job.claims)

    @property
    def attempt(self) -> int:
        return self.job.claims
