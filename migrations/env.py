"""Alembic environment for the Fixia schema.

Online mode uses the connection pgrunbook hands over (config.attributes
["connection"]) or, for plain `alembic` on the command line, the target named
by `-x target=NAME` or $PGRUNBOOK_TARGET (default: the sandbox). Offline mode
renders SQL. Each revision runs in its own transaction.
"""

import os

from alembic import context

from pgrunbook.base import migrations
from pgrunbook.facts import schema

config = context.config
target_metadata = schema.metadata
common = dict(
    target_metadata=target_metadata,
    transaction_per_migration=True,
    compare_type=True,
    compare_server_default=True,
)


def run_offline() -> None:
    context.configure(dialect_name="postgresql", literal_binds=True, **common)
    with context.begin_transaction():
        context.run_migrations()


def run_online(connection) -> None:
    context.configure(connection=connection, **common)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
elif (given := config.attributes.get("connection")) is not None:
    run_online(given)
else:
    name = context.get_x_argument(as_dictionary=True).get("target")
    name = name or os.environ.get("PGRUNBOOK_TARGET", "sandbox")
    with migrations.engine(name).connect() as connection:
        run_online(connection)
