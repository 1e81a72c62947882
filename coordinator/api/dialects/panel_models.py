"""Request and response shapes of the panel dialect (seed 001, Skyport). Skyport clients send numbers as
strings ("memory": "512") and ports as "25565,25566"; both are accepted, and anything else is refused
with the field named."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from coordinator.api.dialects.panel_input import (
    host_port,
    mebibytes,
    percent,
    port_list,
    processor_spec,
    skyport_ports,
)
from coordinator.api.fields import (
    Address,
    BindAddress,
    Bool,
    Int,
    OrganizationId,
    Text,
    not_bool,
    too_deep,
)
from coordinator.domain.records import (
    Allocation,
    HostMetrics,
    Instance,
    InstanceState,
    Node,
    NodeStatus,
    UserRecord,
)
from coordinator.domain.times import iso
from coordinator.service.errors import ServiceError
from coordinator.service.nodes import NodeView, parse_port_ranges

#: 128 TiB in MiB: more than any host has; times 11 (1000% overallocation) still fits a 32-bit column.
MAX_MIB = 2**27

PANEL_STATE = {
    InstanceState.PENDING: "INSTALLING",
    InstanceState.PROVISIONING: "INSTALLING",
    InstanceState.CREATED: "INSTALLING",
    InstanceState.STARTING: "INSTALLING",
    InstanceState.RUNNING: "READY",
    InstanceState.UNHEALTHY: "READY",
    InstanceState.STOPPED: "READY",
    InstanceState.SUSPENDED: "READY",
    InstanceState.RELEASING: "DELETING",
    InstanceState.RELEASED: "DELETED",
    InstanceState.ERROR: "FAILED",
}


def _positive_int(value: Any) -> Any:
    """'512' and 512 are both 512; 0, -1, 1.5 and true are refused."""
    not_bool(value)
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        return value  # left for the strict check to refuse
    return value


PositiveInt = Annotated[int, BeforeValidator(_positive_int), Field(gt=0, strict=False)]
Port = Annotated[int, BeforeValidator(_positive_int), Field(ge=1, le=65535)]
#: Memory or disk: 512, "512", "512MB", "1G" (MiB without a unit).
MiB = Annotated[int, BeforeValidator(mebibytes), Field(gt=0, le=MAX_MIB)]
#: A node's processor: cores (8, "8") or its description as text.
Processor = Annotated[int | str, BeforeValidator(processor_spec)]
#: A deploy's port: 25565, "25565" or "25565:25565" (container:host, the same port).
HostPort = Annotated[int, BeforeValidator(host_port), Field(ge=1, le=65535)]


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


# ---------------------------------------------------------------- nodes


class AllocationRange(Body):
    bindAddress: BindAddress = Field("0.0.0.0", max_length=45, description="An IPv4 or IPv6 address.")
    ports: str = Field(min_length=1, description='Ports and ranges, e.g. "30000-30099,25565".')

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: str) -> str:
        try:
            parse_port_ranges(v, "ports")
        except ServiceError as exc:
            raise ValueError(exc.detail) from exc
        return v


class NodeCreate(Body):
    name: Text = Field(min_length=1, max_length=100)
    tags: list[Text] | Text = Field(default_factory=list, description="A list, or a comma-separated string.")
    ram: MiB = Field(description='Memory for instances: MiB, or with a unit ("16GB").')
    disk: MiB = Field(description='Disk for instances: MiB, or with a unit ("200GB").')
    processor: Processor = Field(
        description='CPU cores for instances (8 or "8"), or the processor as text ("AMD Ryzen 9 5950X"): '
        "then the cores are what the host's agent reports when it connects."
    )
    address: Address = Field(
        min_length=1, max_length=255, description="The host's public address: a host name or an IP address."
    )
    port: Port = Field(description="The agent's port as panels show it.")
    regionId: str | None = None
    allocations: AllocationRange | None = None
    organization: OrganizationId | None = Field(
        None, description="Dedicate the node to this organization: only its instances run there."
    )

    def cpus_and_processor(self) -> tuple[int, str]:
        """(cores, description): cores 0 means "as the agent reports"."""
        return (self.processor, "") if isinstance(self.processor, int) else (0, self.processor)

    def tag_list(self) -> list[str]:
        raw = self.tags.split(",") if isinstance(self.tags, str) else self.tags
        return [t.strip() for t in raw if t.strip()]


class AllocationOut(BaseModel):
    id: str
    bindAddress: str
    port: int
    alias: str | None = None
    notes: str | None = None
    assigned: bool
    instanceId: str | None = None
    primary: bool = False

    @classmethod
    def of(cls, a: Allocation) -> AllocationOut:
        return cls(
            id=a.id,
            bindAddress=a.bind_address,
            port=a.port,
            alias=a.alias,
            notes=a.notes,
            assigned=a.instance_id is not None,
            instanceId=a.instance_id,
            primary=a.primary,
        )


class AllocationCounts(BaseModel):
    total: int
    assigned: int
    free: int


class NodeUse(BaseModel):
    """What the node's live instances reserve, in the units of its capacity fields."""

    ram: int = Field(description="MiB")
    disk: int = Field(description="MiB")
    cpu: int = Field(description="Percent of one core (a 2-core node has 200).")


class UnwantedContainerOut(BaseModel):
    instanceId: str
    containerId: str
    state: str
    removeAt: str | None = Field(description="When the agent removes it (after its grace period).")


def shape_host_metrics(h: HostMetrics | None) -> dict[str, Any]:
    """The panel's (and our node view's) shape of a host's metrics; {} before any heartbeat carried them."""
    if h is None:
        return {}
    return {
        "cpuPercent": round(h.cpu_percent, 2),
        "memoryUsedMiB": h.memory_used_mib,
        "memoryTotalMiB": h.memory_total_mib,
        "diskUsedMiB": h.disk_used_mib,
        "diskTotalMiB": h.disk_total_mib,
        "load": [round(h.load1, 2), round(h.load5, 2), round(h.load15, 2)],
        "rxMbps": round(h.net_rx_mbps, 3),
        "txMbps": round(h.net_tx_mbps, 3),
    }


class NodeOut(BaseModel):
    id: str
    name: str
    tags: list[str]
    ram: int
    disk: int
    processor: str = Field(description="The processor as described at creation, or its cores.")
    cpus: int = Field(description="CPU cores offered to instances (0 until its agent reports them).")
    address: str
    port: int
    regionId: str | None
    organizationId: int | None = Field(description="The organization the node is dedicated to, if any.")
    status: NodeStatus
    isOnline: bool
    connected: bool
    lastChecked: str | None
    heartbeatAgeSeconds: float | None
    enrolled: bool
    agentVersion: str | None
    hostMetrics: dict[str, Any]
    allocations: AllocationCounts
    used: NodeUse
    overallocation: int = Field(description="Percent above capacity the node may be reserved.")
    maintenance: bool
    unwantedContainers: list[UnwantedContainerOut] = Field(
        description="Labelled containers on the host that no instance wants, removed after a grace period."
    )
    engineError: str | None = Field(description="Why the host's container engine does not answer its agent.")
    createdAt: str | None

    @classmethod
    def of(cls, v: NodeView, now: float) -> NodeOut:
        n = v.node
        return cls(
            id=n.id,
            name=n.name,
            tags=n.tags,
            ram=n.memory_mib,
            disk=n.disk_mib,
            processor=n.processor_text,
            cpus=n.cpu_count,
            address=n.address,
            port=n.port,
            regionId=n.region_id,
            organizationId=n.organization_id,
            status=v.status,
            isOnline=v.status is NodeStatus.READY,
            connected=v.connected,
            lastChecked=iso(v.last_heartbeat),
            heartbeatAgeSeconds=round(now - v.last_heartbeat, 3) if v.last_heartbeat else None,
            enrolled=n.enrolled,
            agentVersion=n.agent_version,
            hostMetrics=shape_host_metrics(v.host_metrics),
            allocations=AllocationCounts(
                total=v.allocations_total,
                assigned=v.allocations_assigned,
                free=v.allocations_total - v.allocations_assigned,
            ),
            used=NodeUse(ram=n.used_memory_mib, disk=n.used_disk_mib, cpu=n.used_cpu_percent),
            overallocation=n.overallocation_pct,
            maintenance=n.maintenance,
            unwantedContainers=[
                UnwantedContainerOut(
                    instanceId=u.instance_id,
                    containerId=u.container_id,
                    state=u.state,
                    removeAt=iso(u.remove_at),
                )
                for u in v.unwanted
            ],
            engineError=v.engine_error,
            createdAt=iso(n.created_at),
        )


class NodeCreated(NodeOut):
    joinToken: str = Field(description="One-time enrollment token; shown only in this answer.")
    joinTokenExpiresAt: str
    agentCommand: str = Field(description="The command line to run on the host.")
    allocationList: list[AllocationOut]


# ---------------------------------------------------------------- instances


def _variables(value: Any) -> Any:
    if isinstance(value, str):
        try:
            parsed = json.loads(value) if value.strip() else {}
        except (ValueError, RecursionError) as exc:
            raise ValueError("must be a JSON object of strings") from exc
        if too_deep(parsed):
            raise ValueError("must be a JSON object of strings")
        return parsed
    return value


def _env_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


EnvValue = Annotated[str, BeforeValidator(_env_value)]


class Deploy(Body):
    image: str = Field(
        min_length=1, max_length=255, description="A catalog image's name, or a Docker reference."
    )
    imagename: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="The catalog entry (Skyport's image Name) whose variables and startup apply; `image` is "
        "then the Docker reference to run.",
    )
    memory: MiB = Field(description='Memory limit: MiB, or with a unit ("512MB", "1G").')
    cpu: Annotated[int, BeforeValidator(percent), Field(gt=0, le=100_000)] = Field(
        description='CPU limit, percent of one core (100 = one core; "50%" works too).'
    )
    ports: Annotated[list[HostPort], BeforeValidator(port_list)] = Field(
        default_factory=list,
        description="Host ports (free allocations of the node): a list, or Skyport's "
        '"25565:25565,25566:25566" (container:host pairs; the container port must be the host port).',
    )
    nodeId: str | None = Field(None, min_length=1, description="Deploy on this node, or give regionId.")
    regionId: str | None = Field(
        None,
        min_length=1,
        description="Place in this region (id or identifier), falling back along its chain.",
    )
    name: Text = Field(min_length=1, max_length=100)
    user: str | None = Field(None, description="Owner's user id; the caller when absent.")
    primary: HostPort | None = Field(None, description='One of the ports: 25565, "25565" or "25565:25565".')
    variables: Annotated[dict[str, EnvValue], BeforeValidator(_variables)] = Field(default_factory=dict)
    disk: Annotated[int, BeforeValidator(mebibytes), Field(ge=0, le=MAX_MIB)] = Field(
        0, description="Disk, MiB or with a unit (counted against the node's disk)."
    )
    tags: list[Text] = Field(default_factory=list, description="Only nodes carrying every one of these tags.")
    bandwidth: Int = Field(
        0, ge=0, le=100_000, description="Bandwidth cap each way, Mbps (0: none); the agent enforces it."
    )

    @field_validator("ports")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("the same port is listed twice")
        return v

    @field_validator("variables")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return v


class Placement(BaseModel):
    region: str | None = Field(description="Identifier of the region that served, if the node has one.")
    fallbackUsed: bool


class Listing(BaseModel):
    """Query parameters of the panel's instance lists."""

    model_config = ConfigDict(extra="ignore")

    released: bool = Field(False, description="Include released (deleted) instances, kept as history.")


class InstanceId(Body):
    id: str = Field(min_length=1)


class UserId(Body):
    userId: str = Field(min_length=1)


class Power(Body):
    action: Literal["start", "stop", "restart", "kill"]


class NetworkUse(BaseModel):
    """Bytes since the instance was created (kept across container restarts) and the current rates, from
    the container's own network namespace."""

    rxBytes: int
    txBytes: int
    rxMbps: float
    txMbps: float


class SkyportNode(BaseModel):
    """The node as Skyport embeds it in each instance record (no secrets: Skyport's own carried the node's
    API key)."""

    id: str
    name: str
    tags: list[str]
    ram: int
    disk: int
    processor: str
    address: str
    port: int
    status: Literal["Online", "Offline"] = Field(description="Online while its heartbeats arrive.")

    @classmethod
    def of(cls, node: Node, status: NodeStatus) -> SkyportNode:
        return cls(
            id=node.id,
            name=node.name,
            tags=node.tags,
            ram=node.memory_mib,
            disk=node.disk_mib,
            processor=node.processor_text,
            address=node.address,
            port=node.port,
            status="Online" if status is NodeStatus.READY else "Offline",
        )


class InstanceOut(BaseModel):
    """Skyport's record (Id, Name, User, Node, Memory, Cpu, Disk, Ports, Primary, Image, ContainerId,
    VolumeId, InternalState) beside the canonical fields (id, state, error, ports, ...), so the dashboards
    written for Skyport and operators both read what they expect."""

    Id: str
    Name: str
    User: str
    Node: SkyportNode | None = Field(description="The node it is placed on, as Skyport embeds it.")
    VolumeId: str = Field(description="Skyport's volume id: the instance id.")
    id: str
    name: str
    nodeId: str | None
    userId: str
    organizationId: int
    Image: str
    image: str
    Memory: int
    Cpu: int
    Disk: int
    Ports: str = Field(description='Skyport\'s form: "container:host" pairs, e.g. "25565:25565,25566:25566".')
    ports: list[int] = Field(description="The host ports it holds (its allocations).")
    Primary: int | None
    Variables: dict[str, str]
    ContainerId: str | None
    InternalState: str
    suspended: bool
    state: InstanceState
    error: str | None
    allocations: list[AllocationOut]
    createdAt: str | None
    updatedAt: str | None
    stateChangedAt: str | None
    deliveredAt: str | None
    releasedAt: str | None
    regionId: str | None = None
    network: NetworkUse
    restarts: int = Field(description="Crash restarts its agent made (since that agent started).")
    placement: Placement | None = Field(None, description="Only in a deploy's answer.")

    @classmethod
    def of(
        cls, i: Instance, placement: Placement | None = None, node: SkyportNode | None = None
    ) -> InstanceOut:
        primary = i.primary
        ports = [a.port for a in i.allocations]
        return cls(
            Id=i.id,
            Name=i.name,
            User=i.owner_id,
            Node=node,
            VolumeId=i.id,
            id=i.id,
            name=i.name,
            nodeId=i.node_id,
            userId=i.owner_id,
            organizationId=i.organization_id,
            Image=i.image_ref,
            image=i.image,
            Memory=i.memory_mib,
            Cpu=i.cpu_percent,
            Disk=i.disk_mib,
            Ports=skyport_ports(ports),
            ports=ports,
            Primary=primary.port if primary else None,
            Variables=i.env,
            ContainerId=i.container_id,
            InternalState=PANEL_STATE[i.state],
            suspended=i.suspended,
            state=i.state,
            error=i.error,
            allocations=[AllocationOut.of(a) for a in i.allocations],
            createdAt=iso(i.created_at),
            updatedAt=iso(i.updated_at),
            stateChangedAt=iso(i.state_changed_at),
            deliveredAt=iso(i.delivered_at),
            releasedAt=iso(i.released_at),
            regionId=i.region_id,
            network=NetworkUse(
                rxBytes=i.rx_bytes, txBytes=i.tx_bytes, rxMbps=round(i.rx_mbps, 3), txMbps=round(i.tx_mbps, 3)
            ),
            restarts=i.restarts,
            placement=placement,
        )


# ---------------------------------------------------------------- users


class UserCreate(Body):
    username: Text = Field(
        pattern=r"^[A-Za-z0-9_.-]{3,32}$", description="3-32 letters, digits, '.', '_' or '-'."
    )
    email: Text = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    password: str = Field(min_length=8, max_length=1024, description="At least 8 characters.")
    userId: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    admin: Bool = False
    organization: OrganizationId | None = Field(
        None, description="Put the user in this organization (tenant)."
    )


class UserLookup(Body):
    type: Literal["email", "username"]
    value: str = Field(min_length=1, max_length=254)


class UserOut(BaseModel):
    """Never a password hash."""

    userId: str
    username: str
    email: str
    admin: bool
    organizationId: int
    createdAt: str | None

    @classmethod
    def of(cls, u: UserRecord) -> UserOut:
        return cls(
            userId=u.id,
            username=u.username,
            email=u.email,
            admin=u.admin,
            organizationId=u.organization_id,
            createdAt=iso(u.created_at),
        )


class UserCreated(BaseModel):
    userId: str
    username: str
    email: str
    admin: bool


class NodeDelete(Body):
    nodeId: str = Field(min_length=1)
    force: Bool = Field(False, description="Release the node's live instances first.")


class NodeDeleted(BaseModel):
    message: str
    nodeId: str
    releasedInstances: list[str]
