"""Runs migrations on the connection omniserve hands over (never from an ini file)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from omniserve.accounts.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # Replicas starting together: one migrates, the others wait and find it done.
        connection.execute(text("SELECT pg_advisory_xact_lock(7263514)"))
    context.run_migrations()
