"""The webhook queue on Postgres: jobs with a delivery due (migration 0006's trigger marks them in
the status change's own transaction), claimed by any router replica with SKIP LOCKED under a lease
of their own (a sender that dies mid-send leaves the claim to expire, and the events are sent again:
at least once), and the signing secret per API key."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any, Iterable

import sqlalchemy as sa

from gpu_orchestrator.core.jobs import Job
from gpu_orchestrator.core.webhooks import Try, after_try, due_now, new_secret, next_try
from gpu_orchestrator.store.pg_sql import COLS

CHANNEL = "gpu_orch_webhooks"  # NOTIFYed by the trigger when a delivery falls due

CLAIM = (
    "UPDATE jobs SET webhook_lease_until = now() + make_interval(secs => :lease) WHERE id IN ("
    "SELECT id FROM jobs WHERE webhook_next_at <= now() AND (webhook_lease_until IS NULL OR webhook_lease_until < now()) "
    "ORDER BY webhook_next_at LIMIT :n FOR UPDATE SKIP LOCKED) "
    f"RETURNING {COLS}, now() AS now"
)
SETTLE = ("UPDATE jobs SET webhook_pending = CAST(:p AS text[]), webhook_state = CAST(:s AS jsonb), "
          "webhook_next_at = :n, webhook_lease_until = NULL WHERE id = :id")


class PgWebhookQueue:
    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def claim(self, limit: int, lease_s: float) -> list[tuple[Job, list[str]]]:
        """Jobs with deliveries due, each with its due events, held for `lease_s`."""
        out = []
        with self.engine.begin() as conn:
            for row in conn.execute(sa.text(CLAIM), {"lease": lease_s, "n": limit}).all():
                job, now = Job.from_row(row), row.now.isoformat()
                due = due_now(job.webhook_pending, job.webhook_state, now)
                if due:
                    out.append((job, due))
                else:  # nothing to send yet (a stale mark): its next time, set under the claim's lock
                    conn.execute(sa.text(SETTLE), _settle(job.id, list(job.webhook_pending), job.webhook_state,
                                                          next_try(job.webhook_pending, job.webhook_state, now)))
        return out

    def record(self, job_id: uuid.UUID, tries: Iterable[Try]) -> None:
        """The outcome of a claim's tries; the claim ends."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.text("SELECT webhook_pending, webhook_state, now() AS now FROM jobs WHERE id = :id "
                                       "FOR UPDATE"), {"id": job_id}).first()
            if row is None:  # pruned meanwhile
                return
            now: dt.datetime = row.now
            pending, state = list(row.webhook_pending or []), row.webhook_state
            for t in tries:
                retry_at = None if t.retry_in_s is None else (now + dt.timedelta(seconds=t.retry_in_s)).isoformat()
                pending, state = after_try(pending, state, t.event, at=now.isoformat(), delivered=t.delivered,
                                           status=t.status, error=t.error, retry_at=retry_at)
            conn.execute(sa.text(SETTLE), _settle(job_id, pending, state, next_try(pending, state, now.isoformat())))

    def secret(self, owner: str) -> str:
        """The signing secret of an API key (owner '' : an open stack's anonymous caller), made on first use."""
        with self.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO webhook_secrets (owner, secret) VALUES (:o, :s) ON CONFLICT DO NOTHING"),
                         {"o": owner, "s": new_secret()})
            return conn.execute(sa.text("SELECT secret FROM webhook_secrets WHERE owner = :o"), {"o": owner}).scalar_one()


def _settle(job_id: uuid.UUID, pending: list[str], state: Any, next_at: str | None) -> dict[str, Any]:
    return {"id": job_id, "p": pending, "s": json.dumps(state) if state is not None else None,
            "n": dt.datetime.fromisoformat(next_at) if next_at else None}
