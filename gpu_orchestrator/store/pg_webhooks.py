"""The webhook queue on Postgres: jobs with a delivery due (migration 0006's trigger marks them in
the status change's own transaction), claimed by any router replica with SKIP LOCKED under a short
lease (a sender that dies mid-send leaves the claim to expire, and the event is sent again: at
least once), and the signing secret per API key."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import sqlalchemy as sa

from gpu_orchestrator.core.jobs import Job
from gpu_orchestrator.core.webhooks import after_try, new_secret
from gpu_orchestrator.store.pg_sql import COLS

CHANNEL = "gpu_orch_webhooks"  # NOTIFYed by the trigger when a delivery falls due

CLAIM = (
    "UPDATE jobs SET webhook_next_at = now() + make_interval(secs => :lease) WHERE id IN ("
    "SELECT id FROM jobs WHERE webhook_next_at <= now() ORDER BY webhook_next_at LIMIT :n FOR UPDATE SKIP LOCKED) "
    f"RETURNING {COLS}"
)


class PgWebhookQueue:
    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def claim(self, limit: int, lease_s: float) -> list[tuple[Job, str]]:
        """Due deliveries (each job's first pending event), held for `lease_s`."""
        with self.engine.begin() as conn:
            rows = conn.execute(sa.text(CLAIM), {"lease": lease_s, "n": limit}).all()
        out = []
        for row in rows:
            job = Job.from_row(row)
            if job.webhook_pending:
                out.append((job, job.webhook_pending[0]))
            else:  # nothing left to send (a stale mark): clear it
                self._write(job.id, [], job.webhook_state, None)
        return out

    def record(self, job_id: uuid.UUID, event: str, *, delivered: bool, status: int | None, error: str | None,
               retry_in_s: float | None) -> None:
        """One try's outcome: delivered, failed with a retry in `retry_in_s`, or (None) given up."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.text("SELECT webhook_pending, webhook_state, now() AS now FROM jobs WHERE id = :id "
                                       "FOR UPDATE"), {"id": job_id}).first()
            if row is None:  # pruned meanwhile
                return
            now: dt.datetime = row.now
            pending, state = after_try(row.webhook_pending or [], row.webhook_state, event, at=now.isoformat(),
                                       delivered=delivered, status=status, error=error, give_up=retry_in_s is None)
            if event in pending:  # to try again later
                next_at: dt.datetime | None = now + dt.timedelta(seconds=retry_in_s or 0)
            else:
                next_at = now if pending else None
            self._write(job_id, pending, state, next_at, conn)

    def _write(self, job_id: uuid.UUID, pending: list[str], state: Any, next_at: dt.datetime | None,
               conn: Any = None) -> None:
        sql = sa.text("UPDATE jobs SET webhook_pending = CAST(:p AS text[]), webhook_state = CAST(:s AS jsonb), "
                      "webhook_next_at = :n WHERE id = :id")
        args = {"p": pending, "s": json.dumps(state) if state is not None else None, "n": next_at, "id": job_id}
        if conn is not None:
            conn.execute(sql, args)
            return
        with self.engine.begin() as c:
            c.execute(sql, args)

    def secret(self, owner: str) -> str:
        """The signing secret of an API key (owner '' : an open stack's anonymous caller), made on first use."""
        with self.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO webhook_secrets (owner, secret) VALUES (:o, :s) ON CONFLICT DO NOTHING"),
                         {"o": owner, "s": new_secret()})
            return conn.execute(sa.text("SELECT secret FROM webhook_secrets WHERE owner = :o"), {"o": owner}).scalar_one()
