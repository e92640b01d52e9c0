"""attempt accounting, retry backoff, error history, per-app idempotency keys

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # claims: runs handed out (the lease's attempt token); attempts: the ones charged to the job.
    op.add_column("jobs", sa.Column("claims", sa.Integer, nullable=False, server_default="0"))
    op.execute("UPDATE jobs SET claims = attempts")
    # Runs lost to infrastructure (lease expired, router stopped) while on a model replica.
    op.add_column("jobs", sa.Column("lost_attempts", sa.Integer, nullable=False, server_default="0"))
    # Set when this claim is handed to a model replica: a claim lost before that costs nothing.
    op.add_column("jobs", sa.Column("dispatched_at", sa.DateTime(timezone=True)))
    # Retry backoff: a queued job is not claimed before this.
    op.add_column("jobs", sa.Column("run_after", sa.DateTime(timezone=True)))
    op.add_column("jobs", sa.Column("errors", pg.JSONB, nullable=False, server_default="[]"))
    # sha256 of the submit body, to answer a reused Idempotency-Key with another body with 409.
    op.add_column("jobs", sa.Column("request_hash", sa.Text))
    op.create_check_constraint("jobs_lost_attempts_check", "jobs", "lost_attempts >= 0 AND claims >= attempts")
    # Keys are scoped per app (an owner/API-key column can join this constraint later).
    op.drop_constraint("jobs_idempotency_key_key", "jobs", type_="unique")
    op.create_unique_constraint("jobs_app_idempotency_key", "jobs", ["app_id", "idempotency_key"])


def downgrade() -> None:
    op.drop_constraint("jobs_app_idempotency_key", "jobs", type_="unique")
    op.execute("UPDATE jobs SET idempotency_key = NULL WHERE id NOT IN "
               "(SELECT DISTINCT ON (idempotency_key) id FROM jobs WHERE idempotency_key IS NOT NULL "
               "ORDER BY idempotency_key, created_at DESC)")
    op.create_unique_constraint("jobs_idempotency_key_key", "jobs", ["idempotency_key"])
    op.drop_constraint("jobs_lost_attempts_check", "jobs", type_="check")
    for col in ("request_hash", "errors", "run_after", "dispatched_at", "lost_attempts", "claims"):
        op.drop_column("jobs", col)
