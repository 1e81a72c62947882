"""why a node's container engine does not answer, as its session's holder last heard

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 04:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Written with lastChecked in the batch writes: a coordinator that does not hold the node's session
    # shows the engine error its holder hears. NULL: the engine answered (or no heartbeat came yet).
    op.add_column("nodes", sa.Column("engine_error", sa.String(length=2000), nullable=True))


def downgrade() -> None:
    op.drop_column("nodes", "engine_error")
