"""Each key's limit on realtime sessions open at once; the seconds of audio each request heard.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("sessions", sa.Integer, nullable=True))
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(
            sa.Column("input_audio_seconds", sa.Float, nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("input_audio_seconds")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("sessions")
