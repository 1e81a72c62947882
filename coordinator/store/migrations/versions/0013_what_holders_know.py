"""what a session's holder hears from heartbeats, written for the other coordinators

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
    # Written in the batch writes by the coordinator holding the node's session, so one that does not
    # shows the same: why the node's engine does not answer (NULL: it does, or no heartbeat came yet)...
    op.add_column("nodes", sa.Column("engine_error", sa.String(length=2000), nullable=True))
    # ...and each instance's current rates, crash restarts and why its bandwidth cap is not in force.
    op.add_column("instances", sa.Column("rx_mbps", sa.Float(), nullable=False, server_default=sa.text("0")))
    op.add_column("instances", sa.Column("tx_mbps", sa.Float(), nullable=False, server_default=sa.text("0")))
    op.add_column(
        "instances", sa.Column("restarts", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    op.add_column("instances", sa.Column("limit_error", sa.String(length=2000), nullable=True))


def downgrade() -> None:
    for column in ("limit_error", "restarts", "tx_mbps", "rx_mbps"):
        op.drop_column("instances", column)
    op.drop_column("nodes", "engine_error")
