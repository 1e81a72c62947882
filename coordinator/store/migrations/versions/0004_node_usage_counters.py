"""node usage counters

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 05:49:14.791021
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("used_memory_mib", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("used_cpu_percent", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("used_disk_mib", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("free_allocations", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
    live = "('pending','provisioning','created','starting','running','unhealthy','stopped','suspended','releasing')"
    op.execute(
        "UPDATE nodes SET "
        f"used_memory_mib = (SELECT COALESCE(SUM(memory_mib), 0) FROM instances WHERE node_id = nodes.id AND state IN {live}), "
        f"used_cpu_percent = (SELECT COALESCE(SUM(cpu_percent), 0) FROM instances WHERE node_id = nodes.id AND state IN {live}), "
        f"used_disk_mib = (SELECT COALESCE(SUM(disk_mib), 0) FROM instances WHERE node_id = nodes.id AND state IN {live}), "
        "free_allocations = (SELECT COUNT(*) FROM allocations WHERE node_id = nodes.id AND instance_id IS NULL)"
    )


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("free_allocations")
        batch_op.drop_column("used_disk_mib")
        batch_op.drop_column("used_cpu_percent")
        batch_op.drop_column("used_memory_mib")
