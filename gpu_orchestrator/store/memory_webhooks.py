"""PgWebhookQueue's contract on a MemoryJobStore: the due deliveries its status changes mark
(MemoryJobStore._set does what migration 0006's trigger does), claimed and recorded in memory."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Iterable

from gpu_orchestrator.core.jobs import Job
from gpu_orchestrator.core.webhooks import Try, after_try, due_now, new_secret, next_try
from gpu_orchestrator.store.memory import MemoryJobStore
from gpu_orchestrator.store.memory_rows import _copy, _secs


class MemoryWebhookQueue:
    def __init__(self, store: MemoryJobStore):
        self.store = store
        self._secrets: dict[str, str] = {}
        self._leases: dict[uuid.UUID, object] = {}

    def claim(self, limit: int, lease_s: float) -> list[tuple[Job, list[str]]]:
        s = self.store
        with s._tx() as now:
            out = []
            free = [(at, jid) for jid, at in s.webhook_next.items()
                    if at <= now and (jid not in self._leases or self._leases[jid] < now)]  # type: ignore[operator]
            for _, jid in sorted(free)[:limit]:
                job = s._jobs.get(jid)
                if job is None or not job.webhook_pending:
                    s.webhook_next.pop(jid, None)
                    continue
                due = due_now(job.webhook_pending, job.webhook_state, now.isoformat())
                if not due:
                    nxt = next_try(job.webhook_pending, job.webhook_state, now.isoformat())
                    s.webhook_next[jid] = now.fromisoformat(nxt) if nxt else now
                    continue
                self._leases[jid] = now + _secs(lease_s)
                out.append((_copy(job), due))
            return out

    def record(self, job_id: uuid.UUID, tries: Iterable[Try]) -> None:
        s = self.store
        with s._tx() as now:
            self._leases.pop(job_id, None)
            job = s._jobs.get(job_id)
            if job is None:
                return
            pending, state = list(job.webhook_pending), job.webhook_state
            for t in tries:
                retry_at = None if t.retry_in_s is None else (now + _secs(t.retry_in_s)).isoformat()
                pending, state = after_try(pending, state, t.event, at=now.isoformat(), delivered=t.delivered,
                                           status=t.status, error=t.error, retry_at=retry_at)
            s._jobs[job_id] = dataclasses.replace(job, webhook_pending=tuple(pending), webhook_state=state)
            nxt = next_try(pending, state, now.isoformat())
            if nxt is None:
                s.webhook_next.pop(job_id, None)
            else:
                s.webhook_next[job_id] = now.fromisoformat(nxt)

    def secret(self, owner: str) -> str:
        return self._secrets.setdefault(owner, new_secret())
