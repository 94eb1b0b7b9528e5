"""The server process that wrote each ledger row, to close the running rows of one that died.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=True))
    op.create_index("ix_ledger_status_owner", "ledger", ["status", "owner"])


def downgrade() -> None:
    op.drop_index("ix_ledger_status_owner", table_name="ledger")
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("owner")
