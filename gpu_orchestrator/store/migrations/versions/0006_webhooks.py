"""webhooks: a job's URL and events, what is due and what was delivered; a signing secret per key

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from gpu_orchestrator.store.migrations.online import create_index_concurrently

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

CHANNEL = "gpu_orch_webhooks"  # store/pg_webhooks.py listens: a due delivery wakes a sender at once

# Due deliveries are decided in the transition's own transaction (at least once, whoever wrote the
# status, with no change to the job path's statements): `start` when a job first runs, `completed`
# when it ends, if the job asked for them. The trigger fires only for rows with a webhook.
TRIGGER_FN = f"""
CREATE OR REPLACE FUNCTION jobs_webhook_due() RETURNS trigger AS $$
BEGIN
  IF NEW.status IN ('succeeded', 'failed', 'cancelled') AND 'completed' = ANY(NEW.webhook_events)
     AND NOT 'completed' = ANY(NEW.webhook_pending) THEN
    NEW.webhook_pending := array_append(NEW.webhook_pending, 'completed');
  ELSIF NEW.status = 'running' AND OLD.status = 'queued' AND 'start' = ANY(NEW.webhook_events)
     AND NOT 'start' = ANY(NEW.webhook_pending)
     AND NOT coalesce(NEW.webhook_state -> 'delivered' ? 'start', false)
     AND NOT coalesce(NEW.webhook_state -> 'gave_up' ? 'start', false) THEN
    NEW.webhook_pending := array_append(NEW.webhook_pending, 'start');
  ELSE
    RETURN NEW;
  END IF;
  NEW.webhook_next_at := least(coalesce(NEW.webhook_next_at, now()), now());
  PERFORM pg_notify('{CHANNEL}', '');
  RETURN NEW;
END $$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.add_column("jobs", sa.Column("webhook", sa.Text), if_not_exists=True)
    op.add_column("jobs", sa.Column("webhook_events", pg.ARRAY(sa.Text)), if_not_exists=True)
    op.add_column("jobs", sa.Column("webhook_pending", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
                  if_not_exists=True)
    # {attempts, last_status, last_error, last_attempt_at, delivered: {event: at}, gave_up: {event: at}}
    op.add_column("jobs", sa.Column("webhook_state", pg.JSONB), if_not_exists=True)
    op.add_column("jobs", sa.Column("webhook_next_at", sa.DateTime(timezone=True)), if_not_exists=True)
    # A sender's claim (apart from next_at, which a status change may bring forward meanwhile).
    op.add_column("jobs", sa.Column("webhook_lease_until", sa.DateTime(timezone=True)), if_not_exists=True)
    op.execute(TRIGGER_FN)
    op.execute("DROP TRIGGER IF EXISTS jobs_webhook_due ON jobs")
    op.execute("CREATE TRIGGER jobs_webhook_due BEFORE UPDATE OF status ON jobs FOR EACH ROW "
               "WHEN (NEW.webhook IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status) "
               "EXECUTE FUNCTION jobs_webhook_due()")
    op.create_table(
        "webhook_secrets",
        sa.Column("owner", sa.Text, primary_key=True),  # an API key's id; '' for an open stack's anonymous caller
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        if_not_exists=True,
    )
    # The senders' queue: the few rows with a delivery due (or a retry waiting).
    create_index_concurrently("jobs_webhook_due_idx", "jobs", ["webhook_next_at"],
                              postgresql_where=sa.text("webhook_next_at IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("jobs_webhook_due_idx", table_name="jobs")
    op.execute("DROP TRIGGER IF EXISTS jobs_webhook_due ON jobs")
    op.execute("DROP FUNCTION IF EXISTS jobs_webhook_due()")
    op.drop_table("webhook_secrets")
    for col in ("webhook_lease_until", "webhook_next_at", "webhook_state", "webhook_pending", "webhook_events", "webhook"):
        op.drop_column("jobs", col)
