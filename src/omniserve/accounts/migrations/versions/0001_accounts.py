"""API keys, their change counter and the usage ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hint", sa.String(16), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("revoked_ms", sa.BigInteger, nullable=True),
        sa.Column("rpm", sa.Integer, nullable=True),
        sa.Column("tpm", sa.Integer, nullable=True),
        sa.Column("concurrency", sa.Integer, nullable=True),
        sa.Column("quota_tokens", sa.BigInteger, nullable=True),
        sa.Column("models", sa.Text, nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("used_tokens", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "key_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO key_state (id, version) VALUES (1, 0)")
    op.create_table(
        "ledger",
        sa.Column("request_id", sa.String(36), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("started_ms", sa.BigInteger, nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("finish_reason", sa.String(16), nullable=True),
        sa.Column("prompt_text", sa.Integer, nullable=False),
        sa.Column("prompt_image", sa.Integer, nullable=False),
        sa.Column("prompt_audio", sa.Integer, nullable=False),
        sa.Column("prompt_video", sa.Integer, nullable=False),
        sa.Column("completion_text", sa.Integer, nullable=False),
        sa.Column("completion_audio", sa.Integer, nullable=False),
        sa.Column("completion_reasoning", sa.Integer, nullable=False),
        sa.Column("audio_seconds", sa.Float, nullable=False),
        sa.Column("ttft_ms", sa.Integer, nullable=True),
        sa.Column("ttfa_ms", sa.Integer, nullable=True),
        sa.Column("duration_ms", sa.Integer, nullable=True),
        sa.Column("cost", sa.Float, nullable=False),
    )
    op.create_index("ix_ledger_key_started", "ledger", ["key_id", "started_ms"])
    op.create_index("ix_ledger_started", "ledger", ["started_ms"])


def downgrade() -> None:
    op.drop_table("ledger")
    op.drop_table("key_state")
    op.drop_table("api_keys")
