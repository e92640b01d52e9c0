"""jobs table

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("app_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="queued"),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("params", pg.JSONB, nullable=False, server_default="{}"),
        sa.Column("result", pg.JSONB),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False, server_default="3"),
        sa.Column("timeout_s", sa.Float, nullable=False, server_default="600"),
        sa.Column("backend", sa.Text),
        sa.Column("idempotency_key", sa.Text, unique=True),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "status IN ('queued','running','succeeded','failed','cancelled')", name="jobs_status_check"
        ),
        sa.CheckConstraint("attempts >= 0 AND attempts <= max_attempts", name="jobs_attempts_check"),
    )
    # The dispatcher's claim: queued jobs of one app in priority order.
    op.create_index(
        "jobs_queued_idx", "jobs", ["app_id", sa.text("priority DESC"), "created_at"],
        postgresql_where=sa.text("status = 'queued'"),
    )
    # Lease rescue scans running jobs only.
    op.create_index("jobs_running_idx", "jobs", ["lease_expires_at"], postgresql_where=sa.text("status = 'running'"))
    op.create_index("jobs_list_idx", "jobs", [sa.text("created_at DESC"), sa.text("id DESC")])


def downgrade() -> None:
    op.drop_table("jobs")
