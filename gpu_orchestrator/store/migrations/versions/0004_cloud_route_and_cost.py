"""where a job runs (local or a cloud backend, and why), its cloud prediction, what it cost

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from gpu_orchestrator.store.migrations.online import create_index_concurrently

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: local. Else the cloud backend the job was sent to (replicate, modal), decided at submit
    # or when the local side became unable to run it; local claims skip these rows.
    op.add_column("jobs", sa.Column("route", sa.Text), if_not_exists=True)
    op.add_column("jobs", sa.Column("route_reason", sa.Text), if_not_exists=True)
    # The provider's handle on this job's run ({"provider", "id", "attempt"}), written before we
    # wait on it, so a router that restarts re-attaches instead of creating a second prediction.
    op.add_column("jobs", sa.Column("cloud_ref", pg.JSONB), if_not_exists=True)
    op.add_column("jobs", sa.Column("gpu_seconds", sa.Float), if_not_exists=True)
    op.add_column("jobs", sa.Column("cost_usd", sa.Float), if_not_exists=True)
    # Raw provider metrics and the price used, kept with the figure they produced.
    op.add_column("jobs", sa.Column("usage", pg.JSONB), if_not_exists=True)
    # Cost reports by finish time (and, later, retention) read only finished rows. Built outside the
    # transaction (the columns above are committed first: they are added IF NOT EXISTS, so a run
    # stopped during the build starts again cleanly).
    create_index_concurrently("jobs_finished_idx", "jobs", ["finished_at"],
                    postgresql_include=["app_id", "route", "gpu_seconds", "cost_usd"],
                    postgresql_where=sa.text("finished_at IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("jobs_finished_idx", table_name="jobs")
    for col in ("usage", "cost_usd", "gpu_seconds", "cloud_ref", "route_reason", "route"):
        op.drop_column("jobs", col)
