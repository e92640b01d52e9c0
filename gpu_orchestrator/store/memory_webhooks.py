"""PgWebhookQueue's contract on a MemoryJobStore: the due deliveries its status changes mark
(MemoryJobStore._set does what migration 0006's trigger does), claimed and recorded in memory."""

from __future__ import annotations

import dataclasses
import uuid

from gpu_orchestrator.core.jobs import Job
from gpu_orchestrator.core.webhooks import after_try, new_secret
from gpu_orchestrator.store.memory import MemoryJobStore, _copy, _secs


class MemoryWebhookQueue:
    def __init__(self, store: MemoryJobStore):
        self.store = store
        self._secrets: dict[str, str] = {}

    def claim(self, limit: int, lease_s: float) -> list[tuple[Job, str]]:
        s = self.store
        with s._tx() as now:
            due = sorted((at, jid) for jid, at in s.webhook_next.items() if at <= now)[:limit]
            out = []
            for _, jid in due:
                job = s._jobs.get(jid)
                if job is None or not job.webhook_pending:
                    s.webhook_next.pop(jid, None)
                    continue
                s.webhook_next[jid] = now + _secs(lease_s)
                out.append((_copy(job), job.webhook_pending[0]))
            return out

    def record(self, job_id: uuid.UUID, event: str, *, delivered: bool, status: int | None, error: str | None,
               retry_in_s: float | None) -> None:
        s = self.store
        with s._tx() as now:
            job = s._jobs.get(job_id)
            if job is None:
                return
            pending, state = after_try(job.webhook_pending, job.webhook_state, event, at=now.isoformat(),
                                       delivered=delivered, status=status, error=error, give_up=retry_in_s is None)
            s._jobs[job_id] = dataclasses.replace(job, webhook_pending=tuple(pending), webhook_state=state)
            if event in pending:
                s.webhook_next[job_id] = now + _secs(retry_in_s or 0)
            elif pending:
                s.webhook_next[job_id] = now
            else:
                s.webhook_next.pop(job_id, None)

    def secret(self, owner: str) -> str:
        return self._secrets.setdefault(owner, new_secret())
