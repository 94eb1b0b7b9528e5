"""Alembic migrations of the accounts schema, run by ``omniserve serve`` on start."""
