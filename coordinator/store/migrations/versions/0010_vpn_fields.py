"""stable instance numbers, bandwidth allocation, expiry, redeploy links

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A stable integer per instance (the vpn dialect's `id`), handed out by the database in creation order.
    op.create_table(
        "instance_numbers",
        sa.Column("number", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("instance_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name="fk_instance_numbers_instance_id_instances",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("number", name="pk_instance_numbers"),
        sa.UniqueConstraint("instance_id", name="uq_instance_numbers_instance_id"),
        sqlite_autoincrement=True,
    )
    op.execute("INSERT INTO instance_numbers (instance_id) SELECT id FROM instances ORDER BY created_at, id")
    # Allocated bandwidth (Mbps, 0: none) the agent enforces; when the instance expires; how many more times
    # it may be redeployed; the instance it replaced; and whether it waits to be released for its replacement.
    op.add_column(
        "instances", sa.Column("bandwidth_mbps", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    op.add_column("instances", sa.Column("expires_at", sa.Float(), nullable=True))
    op.add_column(
        "instances",
        sa.Column("redeploy_max_count", sa.Integer(), nullable=False, server_default=sa.text("1")),
    )
    op.add_column("instances", sa.Column("replaces_id", sa.String(length=36), nullable=True))
    op.add_column(
        "instances", sa.Column("pending_release", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.create_index("ix_instances_expires_at", "instances", ["expires_at"])
    op.create_index("ix_instances_replaces_id", "instances", ["replaces_id"])
    # The release sweep looks for the few instances waiting to be released; spelled as SQLAlchemy renders
    # `pending_release IS true` per dialect, so the planners match it.
    op.create_index(
        "ix_instances_pending_release",
        "instances",
        ["id"],
        sqlite_where=sa.text("pending_release IS 1"),
        postgresql_where=sa.text("pending_release IS true"),
    )


def downgrade() -> None:
    op.drop_index("ix_instances_pending_release", table_name="instances")
    op.drop_index("ix_instances_replaces_id", table_name="instances")
    op.drop_index("ix_instances_expires_at", table_name="instances")
    for column in ("pending_release", "replaces_id", "redeploy_max_count", "expires_at", "bandwidth_mbps"):
        op.drop_column("instances", column)
    op.drop_table("instance_numbers")
