"""servers (per-server name, secret and TLS), instance sizes, client tags

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 14:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("instances", sa.Column("size", sa.String(length=64), nullable=True))
    # What a server's tags reference, so a tag can only sit on a server of its own organization.
    op.create_index("uq_instances_id_organization", "instances", ["id", "organization_id"], unique=True)
    # One row per instance provisioned through the servers API: its unique name and its identity. The key
    # fields and the secret are sealed (coordinator/sealing.py); the certificates are public.
    op.create_table(
        "servers",
        sa.Column("instance_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("ca_key", sa.Text(), nullable=False),
        sa.Column("ca_cert", sa.Text(), nullable=False),
        sa.Column("tls_key", sa.Text(), nullable=False),
        sa.Column("tls_cert", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["instances.id"], name="fk_servers_instance_id_instances", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("instance_id", name="pk_servers"),
        sa.UniqueConstraint("name", name="uq_servers_name"),
    )
    # A client's tags exist on their own (created, renamed, deleted); a server carries only existing ones,
    # so a rename or delete reaches every server in the same statement (ON UPDATE/DELETE CASCADE).
    op.create_table(
        "client_tags",
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name="fk_client_tags_organization_id_organizations"
        ),
        sa.PrimaryKeyConstraint("organization_id", "tag", name="pk_client_tags"),
    )
    op.create_table(
        "instance_tags",
        sa.Column("instance_id", sa.String(length=36), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("added_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id", "organization_id"],
            ["instances.id", "instances.organization_id"],
            name="fk_instance_tags_instance_id_instances",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "tag"],
            ["client_tags.organization_id", "client_tags.tag"],
            name="fk_instance_tags_organization_id_client_tags",
            onupdate="CASCADE",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("instance_id", "tag", name="pk_instance_tags"),
    )
    op.create_index("ix_instance_tags_organization_id_tag", "instance_tags", ["organization_id", "tag"])


def downgrade() -> None:
    op.drop_index("ix_instance_tags_organization_id_tag", table_name="instance_tags")
    op.drop_table("instance_tags")
    op.drop_table("client_tags")
    op.drop_table("servers")
    op.drop_index("uq_instances_id_organization", table_name="instances")
    op.drop_column("instances", "size")
