"""indexes that keep the arbiter's reads flat as terminal jobs pile up

Revision ID: 0003
Revises: 0002

queue_stats (every arbiter tick) read the whole table (a parallel seq scan: 59 ms at 1M rows, bench/store.py);
service_times (every 10 s) too (74 ms). Both now read only active or recent rows.
Built CONCURRENTLY (migrations/online.py): on a live table the build does not block intake.
"""
import sqlalchemy as sa
from alembic import op

from gpu_orchestrator.store.migrations.online import create_index_concurrently

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Queued and running jobs only: a small index however many terminal rows there are.
    create_index_concurrently("jobs_active_idx", "jobs", ["app_id", "status", "priority", "created_at"],
                    postgresql_where=sa.text("status IN ('queued', 'running')"))
    # Recently succeeded jobs by finish time, with what the mean run time needs (index-only scan).
    create_index_concurrently("jobs_succeeded_finished_idx", "jobs", ["finished_at"],
                    postgresql_include=["app_id", "started_at"], postgresql_where=sa.text("status = 'succeeded'"))


def downgrade() -> None:
    op.drop_index("jobs_succeeded_finished_idx", table_name="jobs")
    op.drop_index("jobs_active_idx", table_name="jobs")
