"""Domain records and enums shared by the store, the use cases and every dialect."""

from __future__ import annotations

import enum
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


def time_ordered_id() -> str:
    """A UUIDv7 (RFC 9562): millisecond time first, then random bits. New rows then land at the end of
    the indexes keyed by id instead of on a random page each, which is most of what a claim's commit
    writes. Still a UUID to every API that shows it."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 4122 variant
    return str(uuid.UUID(int=value))


class InstanceState(enum.StrEnum):
    """The canonical lifecycle of DESIGN.md; dialects translate these names, never invent their own."""

    PENDING = "pending"
    PROVISIONING = "provisioning"
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    UNHEALTHY = "unhealthy"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    RELEASING = "releasing"
    RELEASED = "released"
    ERROR = "error"


#: States in which an instance counts against its region and holds its allocations.
LIVE_STATES = frozenset(InstanceState) - {InstanceState.RELEASED, InstanceState.ERROR}

#: States from which the agent should have a container for it.
WANTED_STATES = LIVE_STATES - {InstanceState.RELEASING}


class NodeStatus(enum.StrEnum):
    AWAITING_ENROLLMENT = "awaiting_enrollment"
    AWAITING_HEARTBEAT = "awaiting_heartbeat"
    READY = "ready"
    HEARTBEAT_ABNORMAL = "heartbeat_abnormal"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class HostMetrics:
    """A host's load as its agent last measured it (stored in this canonical shape; each API shapes its
    own view of it)."""

    cpu_percent: float = 0.0
    memory_used_mib: int = 0
    memory_total_mib: int = 0
    disk_used_mib: int = 0
    disk_total_mib: int = 0
    load1: float = 0.0
    load5: float = 0.0
    load15: float = 0.0
    net_rx_mbps: float = 0.0
    net_tx_mbps: float = 0.0


@dataclass(slots=True)
class Allocation:
    id: str
    node_id: str
    bind_address: str
    port: int
    alias: str | None = None
    notes: str | None = None
    instance_id: str | None = None
    primary: bool = False
    created_at: float | None = None
    updated_at: float | None = None


@dataclass(slots=True)
class Node:
    id: str
    name: str
    address: str
    port: int
    region_id: str | None
    tags: list[str]
    memory_mib: int
    disk_mib: int
    cpu_count: int
    overallocation_pct: int
    maintenance: bool
    enrolled: bool
    created_at: float
    last_checked: float | None = None
    updated_at: float | None = None
    agent_version: str | None = None
    host_metrics: HostMetrics | None = None
    #: Dedicated to this organization (only its instances run here); None: the shared fleet.
    organization_id: int | None = None
    #: What its live instances reserve (kept by the claims and releases that change it).
    used_memory_mib: int = 0
    used_cpu_percent: int = 0
    used_disk_mib: int = 0
    #: The processor as its operator described it ("AMD Ryzen 9 5950X"); "" when only cores were given.
    processor: str = ""
    #: Why its container engine did not answer, as the last batch write of its session's holder said.
    engine_error: str = ""

    @property
    def processor_text(self) -> str:
        """What panels show as the processor: its description, or else its cores."""
        return self.processor or str(self.cpu_count)


#: Every kind of event the stream and webhooks tell (a webhook may ask for some only).
EVENT_KINDS = ("instance.state", "instance.placed", "instance.crashed", "placement.refused", "node.status")


@dataclass(frozen=True, slots=True)
class FleetEvent:
    """One change as the event stream tells it: ``instance.state`` (data: old, new, event, error) or
    ``node.status`` (data: old, new). Ids grow with every event written."""

    id: int
    at: float
    kind: str
    organization_id: int | None
    node_id: str | None
    instance_id: str | None
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where events are POSTed: an organization's (its events and the shared fleet's node events) or, made
    by an admin, the whole fleet's; ``kinds`` None means every kind. ``cursor``: delivered up to this id."""

    id: str
    organization_id: int
    fleet_wide: bool
    url: str
    description: str
    kinds: tuple[str, ...] | None
    created_at: float
    cursor: int
    delivered: int = 0
    last_delivered_at: float | None = None
    failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    next_attempt_at: float | None = None
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class NodeBeat:
    """What the batch writer stores of a node whose session is here: its last heartbeat and what it said."""

    last_checked: float
    #: Host metrics that came since the last write (None: none came, the stored ones stand).
    host: HostMetrics | None = None
    #: Why its container engine did not answer ("" when it did).
    engine_error: str = ""


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """What the servers dialect adds to an instance: a unique name, its own CA and a certificate for its
    name and address, and a secret. ``secret``, ``ca_key`` and ``tls_key`` are sealed
    (coordinator/security/sealing.py) wherever this record travels; only the agent's workload and the
    servers API answer carry them opened."""

    name: str
    secret: str
    ca_key: str
    ca_cert: str
    tls_key: str
    tls_cert: str


@dataclass(slots=True)
class Instance:
    id: str
    name: str
    organization_id: int
    owner_id: str
    image: str
    image_ref: str
    memory_mib: int
    cpu_percent: int
    disk_mib: int
    env: dict[str, str]
    #: A new instance is pending and unplaced; the store fills these in from its row (and its clock).
    node_id: str | None = None
    region_id: str | None = None
    state: InstanceState = InstanceState.PENDING
    error: str | None = None
    suspended: bool = False
    container_id: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    state_changed_at: float = 0.0
    delivered_at: float | None = None
    released_at: float | None = None
    allocations: list[Allocation] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    stop_signal: str = "SIGTERM"
    tags: list[str] = field(default_factory=list)
    #: Bytes received and sent since creation (across container restarts), and the current rates.
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_mbps: float = 0.0
    tx_mbps: float = 0.0
    #: Crash restarts its agent made since the agent started (from heartbeats; the batch writes store it).
    restarts: int = 0
    #: Why its bandwidth cap is not in force (from heartbeats; not stored).
    limit_error: str | None = None
    #: The catalog size it was ordered with (servers and client dialects).
    size: str | None = None
    #: Set for instances provisioned through the servers API.
    server: ServerIdentity | None = None
    #: A stable integer the database hands out in creation order (the vpn dialect's id).
    number: int = 0
    #: Allocated bandwidth in Mbps (0: none); the agent enforces it on the container's interface.
    bandwidth_mbps: int = 0
    #: When it expires and is released (None: never).
    expires_at: float | None = None
    #: How many more times it may be redeployed without force.
    redeploy_max_count: int = 1
    #: The instance it was redeployed from; and whether this one waits to be released for a replacement.
    replaces_id: str | None = None
    pending_release: bool = False

    @property
    def primary(self) -> Allocation | None:
        return next(
            (a for a in self.allocations if a.primary), self.allocations[0] if self.allocations else None
        )

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: resolved once per request from a key or token, then consulted by the policy layer."""

    user_id: str
    username: str
    organization_id: int
    admin: bool


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    username: str
    email: str
    admin: bool
    organization_id: int
    created_at: float


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    user_id: str
    name: str
    prefix: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None
