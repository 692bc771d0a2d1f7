"""Alembic's entry point for the state database's migrations.

Run only from ``unsir_pipeline.adapters.state_store.StateDatabase.migrate``, which passes the open
connection (inside its transaction) and the store's version table in ``config.attributes``;
there is no ``alembic.ini`` and no offline (SQL script) mode.
"""

from alembic import context

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the state migrations through unsir_pipeline.adapters.state_store.StateDatabase.migrate")
context.configure(connection=connection, version_table=config.attributes["version_table"])
with context.begin_transaction():
    context.run_migrations()
