"""SQLAlchemy Core tables. The schema itself belongs to the Alembic migrations beside this module; these
definitions must match them (a test compares the two).

Invariants are held here, not only in code:
- an allocation names at most one instance (one column), unique per (node, bind address, port);
- a released instance holds no allocation: allocations reference (instance id, released flag) with ON UPDATE
  CASCADE and a CHECK that the copied flag is false, so releasing an instance that still holds an
  allocation fails inside the database;
- a region never counts more live instances than its server limit (CHECK on the counter the claim updates).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

ID = 36  # uuid text

organizations = Table(
    "organizations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("created_at", Float, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("password_hash", Text, nullable=True),
    Column("admin", Boolean, nullable=False, server_default=false()),
    Column("organization_id", Integer, ForeignKey("organizations.id"), nullable=False),
    Column("created_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("user_id", String(64), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("name", String(100), nullable=False),
    Column("prefix", String(32), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)

regions = Table(
    "regions",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("identifier", String(20), nullable=False, unique=True),
    Column("country_id", String(2), nullable=True),
    Column("fallback_region_id", String(ID), ForeignKey("regions.id", ondelete="SET NULL"), nullable=True),
    Column("server_limit", Integer, nullable=False),
    Column("live_count", Integer, nullable=False, server_default=text("0")),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    CheckConstraint("live_count >= 0 AND live_count <= server_limit", name="within_limit"),
    CheckConstraint("server_limit >= 1", name="limit_positive"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("address", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("region_id", String(ID), ForeignKey("regions.id"), nullable=True, index=True),
    Column("tags", JSON, nullable=False),
    Column("memory_mib", Integer, nullable=False),
    Column("disk_mib", Integer, nullable=False),
    Column("cpu_count", Integer, nullable=False),
    # The processor as its operator described it (seed 001's `processor` is text); NULL: cores only.
    Column("processor", String(200), nullable=True),
    Column("overallocation_pct", Integer, nullable=False, server_default=text("0")),
    Column("maintenance", Boolean, nullable=False, server_default=false()),
    Column("enrolled", Boolean, nullable=False, server_default=false()),
    Column("cert_serial", String(64), nullable=True),
    Column("agent_version", String(64), nullable=True),
    Column("last_checked", Float, nullable=True),
    Column("host_metrics", JSON, nullable=True),
    Column("engine_error", String(2000), nullable=True),
    # What live instances use and how many allocations are free: kept by the same transactions that place
    # and release, so a placement reads one row per node instead of aggregating instances and allocations.
    Column("used_memory_mib", Integer, nullable=False, server_default=text("0")),
    Column("used_cpu_percent", Integer, nullable=False, server_default=text("0")),
    Column("used_disk_mib", Integer, nullable=False, server_default=text("0")),
    Column("free_allocations", Integer, nullable=False, server_default=text("0")),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # A node dedicated to one organization runs only its instances (NULL: the shared fleet).
    Column("organization_id", Integer, ForeignKey("organizations.id"), nullable=True, index=True),
)

join_tokens = Table(
    "join_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("node_id", String(ID), ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("digest", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
)

instances = Table(
    "instances",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("organization_id", Integer, ForeignKey("organizations.id"), nullable=False, index=True),
    Column("owner_id", String(64), ForeignKey("users.id"), nullable=False, index=True),
    Column("image", String(255), nullable=False),
    Column("image_ref", String(255), nullable=False),
    Column("command", JSON, nullable=False),
    Column("stop_signal", String(16), nullable=False, server_default="SIGTERM"),
    Column("memory_mib", Integer, nullable=False),
    Column("cpu_percent", Integer, nullable=False),
    Column("disk_mib", Integer, nullable=False, server_default=text("0")),
    Column("env", JSON, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("node_id", String(ID), ForeignKey("nodes.id", ondelete="SET NULL"), nullable=True, index=True),
    Column("region_id", String(ID), ForeignKey("regions.id", ondelete="SET NULL"), nullable=True, index=True),
    Column("state", String(16), nullable=False, index=True),
    Column("error", Text, nullable=True),
    Column("suspended", Boolean, nullable=False, server_default=false()),
    Column("released", Boolean, nullable=False, server_default=false()),
    Column("container_id", String(80), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("state_changed_at", Float, nullable=False),
    Column("delivered_at", Float, nullable=True),
    Column("released_at", Float, nullable=True),
    # Bandwidth totals since creation, kept across container restarts (coordinator/fleet/bandwidth.py).
    Column("rx_bytes", BigInteger, nullable=False, server_default=text("0")),
    Column("tx_bytes", BigInteger, nullable=False, server_default=text("0")),
    Column("net_epoch", String(120), nullable=True),
    Column("net_rx_seen", BigInteger, nullable=False, server_default=text("0")),
    Column("net_tx_seen", BigInteger, nullable=False, server_default=text("0")),
    # As the node's session holder last heard them (migration 0013): what the other coordinators show.
    Column("rx_mbps", Float, nullable=False, server_default=text("0")),
    Column("tx_mbps", Float, nullable=False, server_default=text("0")),
    Column("restarts", Integer, nullable=False, server_default=text("0")),
    Column("limit_error", String(2000), nullable=True),
    #: The catalog size it was ordered with (servers and client dialects); None for explicit limits.
    Column("size", String(64), nullable=True),
    #: Allocated bandwidth in Mbps (0: none), enforced by the agent on the container's interface.
    Column("bandwidth_mbps", Integer, nullable=False, server_default=text("0")),
    #: When it expires and is released (None: never).
    Column("expires_at", Float, nullable=True, index=True),
    #: How many more times it may be redeployed without force.
    Column("redeploy_max_count", Integer, nullable=False, server_default=text("1")),
    #: The instance it was redeployed from, and whether it waits to be released for its replacement.
    Column("replaces_id", String(ID), nullable=True, index=True),
    Column("pending_release", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("id", "released", name="uq_instances_id_released"),
    CheckConstraint("released = (state = 'released')", name="released_flag"),
)
# What a server's tags reference, so a tag can only sit on a server of its own organization.
Index("uq_instances_id_organization", instances.c.id, instances.c.organization_id, unique=True)
# The release sweep's few candidates (as `pending_release IS true` renders per dialect).
Index(
    "ix_instances_pending_release",
    instances.c.id,
    sqlite_where=text("pending_release IS 1"),
    postgresql_where=text("pending_release IS true"),
)

#: A stable integer per instance (the vpn dialect's ``id``), handed out by the database in creation order.
instance_numbers = Table(
    "instance_numbers",
    metadata,
    Column("number", Integer, primary_key=True, autoincrement=True),
    Column(
        "instance_id", String(ID), ForeignKey("instances.id", ondelete="CASCADE"), nullable=False, unique=True
    ),
    sqlite_autoincrement=True,
)

#: Instances provisioned through the servers API: a unique name and a per-server identity. ``secret``,
#: ``ca_key`` and ``tls_key`` are sealed (coordinator/security/sealing.py); the certificates are public.
servers = Table(
    "servers",
    metadata,
    Column("instance_id", String(ID), ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("secret", Text, nullable=False),
    Column("ca_key", Text, nullable=False),
    Column("ca_cert", Text, nullable=False),
    Column("tls_key", Text, nullable=False),
    Column("tls_cert", Text, nullable=False),
)

#: A client's (organization's) tags. They exist on their own; servers carry only existing ones, so a rename
#: or delete reaches every server in the same statement (ON UPDATE / ON DELETE CASCADE).
client_tags = Table(
    "client_tags",
    metadata,
    Column("organization_id", Integer, ForeignKey("organizations.id"), primary_key=True),
    Column("tag", String(64), primary_key=True),
    Column("created_at", Float, nullable=False),
)

instance_tags = Table(
    "instance_tags",
    metadata,
    Column("instance_id", String(ID), primary_key=True),
    Column("organization_id", Integer, nullable=False),
    Column("tag", String(64), primary_key=True),
    Column("added_at", Float, nullable=False),
    ForeignKeyConstraint(
        ["instance_id", "organization_id"],
        ["instances.id", "instances.organization_id"],
        name="fk_instance_tags_instance_id_instances",
        ondelete="CASCADE",
    ),
    ForeignKeyConstraint(
        ["organization_id", "tag"],
        ["client_tags.organization_id", "client_tags.tag"],
        name="fk_instance_tags_organization_id_client_tags",
        onupdate="CASCADE",
        ondelete="CASCADE",
    ),
)
Index("ix_instance_tags_organization_id_tag", instance_tags.c.organization_id, instance_tags.c.tag)

allocations = Table(
    "allocations",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("node_id", String(ID), ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False),
    Column("bind_address", String(45), nullable=False),
    Column("port", Integer, nullable=False),
    Column("alias", String(255), nullable=True),
    Column("notes", Text, nullable=True),
    Column("instance_id", String(ID), nullable=True),
    Column("instance_released", Boolean, nullable=True),
    Column("is_primary", Boolean, nullable=False, server_default=false()),
    Column("created_at", Float, nullable=True),
    Column("updated_at", Float, nullable=True),
    UniqueConstraint("node_id", "bind_address", "port", name="uq_allocations_node_address_port"),
    ForeignKeyConstraint(
        ["instance_id", "instance_released"],
        ["instances.id", "instances.released"],
        name="fk_allocations_instance_live",
        onupdate="CASCADE",
    ),
    CheckConstraint("port >= 1 AND port <= 65535", name="port_range"),
    CheckConstraint(
        "(instance_id IS NULL AND instance_released IS NULL) OR "
        "(instance_id IS NOT NULL AND instance_released = false)",
        name="assigned_live_only",
    ),
)

# Partial indexes: a claim only takes an entry out of the first and puts one into the second, so it dirties
# fewer pages than whole-column indexes would (pages written are what a claim's commit costs).
_FREE = allocations.c.instance_id.is_(None)
_HELD = allocations.c.instance_id.is_not(None)
Index(
    "ix_allocations_free",
    allocations.c.node_id,
    allocations.c.port,
    sqlite_where=_FREE,
    postgresql_where=_FREE,
)
Index("ix_allocations_held", allocations.c.instance_id, sqlite_where=_HELD, postgresql_where=_HELD)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False, index=True),
    Column("user_id", String(64), nullable=True),
    Column("key_id", String(ID), nullable=True),
    Column("client", String(64), nullable=True),
    Column("method", String(8), nullable=False),
    Column("path", String(255), nullable=False),
    Column("status", Integer, nullable=False),
    Column("request_id", String(32), nullable=True),
)

#: What changed in the fleet (store/events.py), written with the change; the event stream reads it.
events = Table(
    "events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False, index=True),
    Column("kind", String(40), nullable=False),
    #: Who may see it: that organization (and admins); NULL on a node event is the shared fleet's (all).
    Column("organization_id", Integer, nullable=True),
    Column("node_id", String(64), nullable=True),
    Column("instance_id", String(64), nullable=True),
    Column("data", JSON, nullable=False),
)

#: Where the fleet's events are POSTed (service/webhooks.py); the secret is sealed, the cursor says how far
#: delivery got (at least once, in id order, per hook).
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", String(ID), primary_key=True),
    #: Whose events it gets (with the shared fleet's node events); every event when fleet_wide (an admin's).
    Column(
        "organization_id",
        Integer,
        ForeignKey("organizations.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("fleet_wide", Boolean, nullable=False),
    Column("url", Text, nullable=False),
    Column("description", String(200), nullable=False),
    #: Event kinds it wants; NULL: all.
    Column("kinds", JSON, nullable=True),
    Column("secret", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    #: Every event up to this id has been delivered (or given up on).
    Column("cursor", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("delivered", Integer, nullable=False, server_default="0"),
    Column("last_delivered_at", Float, nullable=True),
    #: Failed attempts at the event after the cursor; reset by a delivery.
    Column("failures", Integer, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", Float, nullable=True),
    Column("next_attempt_at", Float, nullable=True),
    #: Events given up on after webhooks.max_attempts.
    Column("dropped", Integer, nullable=False, server_default="0"),
)

#: Catalog entries added through the API (those of config/images.yaml live in that file).
catalog_images = Table(
    "catalog_images",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("definition", JSON, nullable=False),
    Column("created_by", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
)

#: The secrets every coordinator of the database shares (CA, sealing key, JWT secret), each sealed with the
#: cluster key (coordinator/security/cluster.py). Empty when the coordinators keep them in a data directory.
cluster_secrets = Table(
    "cluster_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

#: The coordinators on this database (PostgreSQL clusters), each touching its row every batch period: one
#: whose row is stale is gone, and the sessions it held are nobody's.
coordinators = Table(
    "coordinators",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("name", String(255), nullable=False),
    #: HOST:PORT its agents' sessions dial (the agentCommand of a new node lists every live one's).
    Column("address", String(255), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)

#: Which coordinator holds (or last held) each node's agent session, since when: that one watches the node.
node_sessions = Table(
    "node_sessions",
    metadata,
    Column("node_id", String(ID), ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
    Column("coordinator_id", String(ID), nullable=False),
    Column("since", Float, nullable=False),
)
