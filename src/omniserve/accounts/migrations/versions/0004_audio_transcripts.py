"""What each streamed answer's audio said, by audio id, for history that refers to it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audio_transcripts",
        sa.Column("audio_id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("transcript", sa.Text, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_audio_transcripts_expires", "audio_transcripts", ["expires_ms"])


def downgrade() -> None:
    op.drop_index("ix_audio_transcripts_expires", table_name="audio_transcripts")
    op.drop_table("audio_transcripts")
