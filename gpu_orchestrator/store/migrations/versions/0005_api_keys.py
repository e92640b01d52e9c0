"""API keys (hashed), each job's owner, and who may read an artifact

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from gpu_orchestrator.store.migrations.online import create_index_concurrently

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The token is go_<id>_<secret>; only the secret's SHA-256 is kept (core/keys.py).
    # Everything before the concurrent builds is IF NOT EXISTS: a run stopped during a build (whose
    # autocommit block committed this part) starts again from the top.
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("secret_hash", sa.Text, nullable=False),
        sa.Column("scopes", pg.ARRAY(sa.Text), nullable=False),
        sa.Column("apps", pg.ARRAY(sa.Text)),  # NULL: every app
        sa.Column("quota_jobs_per_min", sa.Integer),
        sa.Column("max_queued", sa.Integer),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        if_not_exists=True,
    )
    # One live key per name (names are how people manage keys); a revoked name may be reused.
    op.create_index("api_keys_live_name_idx", "api_keys", ["name"], unique=True,
                    postgresql_where=sa.text("revoked_at IS NULL"), if_not_exists=True)
    # The key id that submitted the job (NULL: an open stack's anonymous caller).
    op.add_column("jobs", sa.Column("owner", sa.Text), if_not_exists=True)
    # Who may download an artifact: the key that uploaded it, and the owner of the job whose result
    # holds it (rows go with the job).
    op.create_table(
        "artifact_owners",
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("job_id", pg.UUID(as_uuid=True), sa.ForeignKey("jobs.id", ondelete="CASCADE")),
        sa.PrimaryKeyConstraint("uri", "owner"),
        if_not_exists=True,
    )
    op.create_index("artifact_owners_job_idx", "artifact_owners", ["job_id"], postgresql_where=sa.text("job_id IS NOT NULL"),
                    if_not_exists=True)
    # A key's own jobs, newest first (lists), and its recent and active ones (quotas): on the live
    # jobs table, built concurrently.
    create_index_concurrently("jobs_owner_idx", "jobs", ["owner", "created_at"], postgresql_where=sa.text("owner IS NOT NULL"))
    create_index_concurrently("jobs_owner_active_idx", "jobs", ["owner"],
                              postgresql_where=sa.text("owner IS NOT NULL AND status IN ('queued', 'running')"))


def downgrade() -> None:
    op.drop_table("artifact_owners")
    op.drop_index("jobs_owner_active_idx", table_name="jobs")
    op.drop_index("jobs_owner_idx", table_name="jobs")
    op.drop_column("jobs", "owner")
    op.drop_index("api_keys_live_name_idx", table_name="api_keys")
    op.drop_table("api_keys")
