"""allocation timestamps

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 05:32:46.360794
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("created_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("updated_at", sa.Float(), nullable=True))
    # Existing allocations date from their node.
    op.execute(
        "UPDATE allocations SET created_at = (SELECT created_at FROM nodes WHERE nodes.id = allocations.node_id), "
        "updated_at = (SELECT created_at FROM nodes WHERE nodes.id = allocations.node_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
        batch_op.drop_column("created_at")
