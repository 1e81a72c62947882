"""partial allocation indexes

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 07:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FREE = sa.text("instance_id IS NULL")
HELD = sa.text("instance_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_allocations_free", table_name="allocations")
    op.drop_index("ix_allocations_instance_id", table_name="allocations")
    op.create_index(
        "ix_allocations_free",
        "allocations",
        ["node_id", "port"],
        sqlite_where=FREE,
        postgresql_where=FREE,
    )
    op.create_index(
        "ix_allocations_held", "allocations", ["instance_id"], sqlite_where=HELD, postgresql_where=HELD
    )


def downgrade() -> None:
    op.drop_index("ix_allocations_held", table_name="allocations")
    op.drop_index("ix_allocations_free", table_name="allocations")
    op.create_index("ix_allocations_instance_id", "allocations", ["instance_id"])
    op.create_index("ix_allocations_free", "allocations", ["node_id", "instance_id"])
