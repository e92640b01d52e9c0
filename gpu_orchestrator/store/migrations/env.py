"""Alembic environment: runs online against the connection the store hands in."""

from alembic import context
from sqlalchemy import create_engine

config = context.config
connection = config.attributes.get("connection")


def run(conn) -> None:
    # One transaction per migration: a migration that builds an index concurrently commits what
    # came before the build (store/migrations/online.py).
    context.configure(connection=conn, target_metadata=None, version_table="gpu_orch_alembic_version",
                      transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    run(connection)
else:  # `alembic -c ... upgrade head` from the command line
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        run(conn)
