"""nodes dedicated to one organization

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 09:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: a node of the shared fleet. No table rebuild (other tables refer to nodes): SQLite takes the
    # reference inline in ADD COLUMN, which Alembic does not render, so it is spelled out there.
    fk = op.f("fk_nodes_organization_id_organizations")
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            f"ALTER TABLE nodes ADD COLUMN organization_id INTEGER CONSTRAINT {fk} REFERENCES organizations (id)"
        )
    else:
        op.add_column("nodes", sa.Column("organization_id", sa.Integer(), nullable=True))
        op.create_foreign_key(fk, "nodes", "organizations", ["organization_id"], ["id"])
    op.create_index(op.f("ix_nodes_organization_id"), "nodes", ["organization_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_nodes_organization_id"), table_name="nodes")
    op.drop_column("nodes", "organization_id")
