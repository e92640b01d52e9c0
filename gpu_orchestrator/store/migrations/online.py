"""Index builds that do not block intake, for migrations on a live `jobs` table.

A plain CREATE INDEX holds a SHARE lock for the whole build: every INSERT (a submit) and UPDATE
(a claim, a completion) waits behind it, for minutes on a million rows. CREATE INDEX CONCURRENTLY
takes only SHARE UPDATE EXCLUSIVE, which writers do not conflict with, but it cannot run inside a
transaction, and a build that fails or is interrupted leaves an INVALID index behind (used by no
query, yet updated by every write). So each build here runs in an autocommit block, and an
INVALID index of the same name is dropped and built again; a valid one is kept (a migration that
stopped half-way runs again from its start: everything else in it must be idempotent too).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op


def index_state(name: str) -> bool | None:
    """True: the index exists and is valid; False: it exists, INVALID; None: it does not exist."""
    return op.get_bind().execute(
        sa.text("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(:n)"), {"n": name}
    ).scalar()


def create_index_concurrently(name: str, table: str, columns: list[str], **kw: Any) -> None:
    """op.create_index(..., postgresql_concurrently=True) outside the migration's transaction,
    replacing an INVALID index of that name a failed build left."""
    with op.get_context().autocommit_block():
        state = index_state(name)
        if state is True:
            return
        if state is False:
            op.execute(sa.text(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"'))
        op.create_index(name, table, columns, postgresql_concurrently=True, **kw)
