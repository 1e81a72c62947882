"""a node's processor as its operator described it

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Seed 001's nodes/create takes `processor` as text ("AMD Ryzen 9 5950X"); the cores then come from the
    # node's agent. NULL: only cores were given.
    op.add_column("nodes", sa.Column("processor", sa.String(length=200), nullable=True))


def downgrade() -> None:
    op.drop_column("nodes", "processor")
