"""instance bandwidth totals

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ZERO = sa.text("0")


def upgrade() -> None:
    # Totals since creation, and the last raw counters folded into them with the counters' epoch (container
    # and start time): after a coordinator restart the next heartbeat adds only what is new.
    op.add_column("instances", sa.Column("rx_bytes", sa.BigInteger(), nullable=False, server_default=ZERO))
    op.add_column("instances", sa.Column("tx_bytes", sa.BigInteger(), nullable=False, server_default=ZERO))
    op.add_column("instances", sa.Column("net_epoch", sa.String(length=120), nullable=True))
    op.add_column("instances", sa.Column("net_rx_seen", sa.BigInteger(), nullable=False, server_default=ZERO))
    op.add_column("instances", sa.Column("net_tx_seen", sa.BigInteger(), nullable=False, server_default=ZERO))


def downgrade() -> None:
    for column in ("net_tx_seen", "net_rx_seen", "net_epoch", "tx_bytes", "rx_bytes"):
        op.drop_column("instances", column)
