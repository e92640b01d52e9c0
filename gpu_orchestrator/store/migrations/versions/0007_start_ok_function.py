"""jobs_start_ok(): whether a job just submitted may start at once, read after the claim lock

Revision ID: 0007
Revises: 0006
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The insert-and-start (store/pg_sql.py INSERT_STARTED) takes the app's claim lock and inserts in
# one statement, one round trip. A statement's own queries read the snapshot taken when it began,
# before it waited for the lock; each query in a VOLATILE plpgsql function takes a fresh one, so
# the check sees every claim and start committed while it waited, and the in-flight bound holds.
START_OK_FN = """
CREATE OR REPLACE FUNCTION jobs_start_ok(p_app text, p_route text, p_cap integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  RETURN NOT EXISTS (SELECT 1 FROM jobs WHERE app_id = p_app AND status = 'queued'
                     AND route IS NOT DISTINCT FROM p_route AND (run_after IS NULL OR run_after <= now()))
     AND (SELECT count(*) FROM jobs WHERE app_id = p_app AND status = 'running'
          AND route IS NOT DISTINCT FROM p_route) < p_cap;
END $$
"""


def upgrade() -> None:
    op.execute(START_OK_FN)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS jobs_start_ok(text, text, integer)")
