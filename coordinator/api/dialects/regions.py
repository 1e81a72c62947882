"""The regions dialect (seed 000, Kyro): regions with stats, their nodes and allocations, nested at most
one level (a node's region comes without its nodes; never the string "[Circular Reference]"). Errors are
`{"error": "..."}` in the original's words; reads need any caller, writes an admin."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from coordinator.api.dialects.panel_models import Body
from coordinator.api.fields import Int, Text
from coordinator.api.routing import Call, Router
from coordinator.domain.records import Allocation, Node, NodeStatus
from coordinator.domain.times import iso
from coordinator.service.regions import NodeInRegion, RegionView


def kyro_error(status: int, message: str, field: str | None) -> web.Response:
    return web.json_response({"error": message}, status=status)


class KyroError(BaseModel):
    error: str


#: Kyro's own words for what the region use cases refuse.
MESSAGES = {
    "region.not_found": "Region not found",
    "region.identifier_taken": "Region with this identifier already exists",
    "region.fallback_not_found": "Fallback region not found",
    "region.own_fallback": "Region cannot be its own fallback",
    "region.has_nodes": "Cannot delete region with assigned nodes",
    "region.is_fallback": "Cannot delete region: it is the fallback of {regions}",
}
router = Router(
    "regions",
    render_error=kyro_error,
    admin_message="Insufficient permissions",
    error_model=KyroError,
    messages=MESSAGES,
)

IDENTIFIER = r"^[a-z0-9-]+$"
#: More live instances than any region will hold, well inside a 32-bit column.
MAX_SERVER_LIMIT = 10_000_000


class RegionFields(Body):
    countryId: str | None = Field(None, max_length=2)
    fallbackRegionId: uuid.UUID | None = None
    serverLimit: Int | None = Field(None, ge=1, le=MAX_SERVER_LIMIT)

    def columns(self) -> dict[str, Any]:
        """The fields the caller sent, as columns; an explicit null clears countryId or fallbackRegionId."""
        mapping = {
            "name": "name",
            "identifier": "identifier",
            "countryId": "country_id",
            "fallbackRegionId": "fallback_region_id",
            "serverLimit": "server_limit",
        }
        return {
            mapping[k]: (str(v) if isinstance(v, uuid.UUID) else v)
            for k, v in self.model_dump(exclude_unset=True).items()
            if v is not None or k in ("countryId", "fallbackRegionId")
        }


class RegionCreate(RegionFields):
    name: Text = Field(min_length=1, max_length=100)
    identifier: str = Field(min_length=2, max_length=20, pattern=IDENTIFIER)


class RegionPatch(RegionFields):
    name: Text | None = Field(None, min_length=1, max_length=100)
    identifier: str | None = Field(None, min_length=2, max_length=20, pattern=IDENTIFIER)


class Stats(BaseModel):
    serverCount: int
    nodeCount: int
    onlineNodeCount: int
    atCapacity: bool


class AllocationK(BaseModel):
    id: str
    nodeId: str
    bindAddress: str
    port: int
    alias: str | None
    notes: str | None
    assigned: bool
    serverId: str | None
    createdAt: str | None
    updatedAt: str | None

    @classmethod
    def of(cls, a: Allocation, foreign: frozenset[str] = frozenset()) -> AllocationK:
        """``foreign``: instances the caller may not know of; their allocations show assigned, to nobody."""
        return cls(
            id=a.id,
            nodeId=a.node_id,
            bindAddress=a.bind_address,
            port=a.port,
            alias=a.alias,
            notes=a.notes,
            assigned=a.instance_id is not None,
            serverId=a.instance_id if a.instance_id not in foreign else None,
            createdAt=iso(a.created_at),
            updatedAt=iso(a.updated_at),
        )


class NodeRef(BaseModel):
    id: str
    name: str
    fqdn: str


class UnassignedAllocation(AllocationK):
    node: NodeRef


class FallbackRef(BaseModel):
    """The fallback region by name, as the Kyro admin pages show it beside each region."""

    id: str
    name: str
    identifier: str


class RegionSummary(BaseModel):
    """A region nested inside a node: everything but its nodes (one level of nesting, no cycles)."""

    id: str
    name: str
    identifier: str
    countryId: str | None
    fallbackRegionId: str | None
    fallbackRegion: FallbackRef | None
    serverLimit: int
    stats: Stats
    createdAt: str | None
    updatedAt: str | None


class NodeBase(BaseModel):
    """A node as Kyro shows it (also what moving it to a region answers)."""

    id: str
    name: str
    fqdn: str
    port: int
    regionId: str | None
    isOnline: bool
    lastChecked: str | None
    createdAt: str | None
    updatedAt: str | None


class NodeK(NodeBase):
    allocations: list[AllocationK]
    region: RegionSummary


class RegionK(RegionSummary):
    nodes: list[NodeK]


def _summary(view: RegionView) -> RegionSummary:
    r, s = view.region, view.stats
    return RegionSummary(
        id=r.id,
        name=r.name,
        identifier=r.identifier,
        countryId=r.country_id,
        fallbackRegionId=r.fallback_region_id,
        fallbackRegion=(
            FallbackRef(id=f.id, name=f.name, identifier=f.identifier) if (f := view.fallback) else None
        ),
        serverLimit=r.server_limit,
        stats=Stats(
            serverCount=s.server_count,
            nodeCount=s.node_count,
            onlineNodeCount=s.online_node_count,
            atCapacity=s.at_capacity(r.server_limit),
        ),
        createdAt=iso(r.created_at),
        updatedAt=iso(r.updated_at),
    )


def _node(m: NodeInRegion, region: RegionSummary, foreign: frozenset[str]) -> NodeK:
    n: Node = m.node
    return NodeK(
        id=n.id,
        name=n.name,
        fqdn=n.address,
        port=n.port,
        regionId=n.region_id,
        isOnline=m.online,
        lastChecked=iso(m.last_checked),
        allocations=[AllocationK.of(a, foreign) for a in m.allocations],
        region=region,
        createdAt=iso(n.created_at),
        updatedAt=iso(n.updated_at),
    )


def _ref(n: Node) -> NodeRef:
    return NodeRef(id=n.id, name=n.name, fqdn=n.address)


def render(view: RegionView) -> RegionK:
    summary = _summary(view)
    return RegionK(**summary.model_dump(), nodes=[_node(m, summary, view.foreign) for m in view.nodes])


@router.route("GET", "/api/regions", response=list[RegionK])
async def list_regions(call: Call) -> list[RegionK]:
    """Every region with its stats, nodes and their allocations."""
    return [render(v) for v in await call.services.regions.list_views(call.caller)]


@router.route(
    "POST",
    "/api/regions",
    body=RegionCreate,
    response=RegionK,
    status=201,
    access="admin",
    errors={400: "Invalid request or duplicate identifier", 403: "Forbidden"},
)
async def create_region(call: Call, body: RegionCreate) -> RegionK:
    """Create a region (serverLimit defaults to 100)."""
    return render(await call.services.regions.create(body.columns()))


@router.route("GET", "/api/regions/{id}", response=RegionK, errors={404: "Region not found"})
async def get_region(call: Call) -> RegionK:
    """One region with its stats, nodes and their allocations."""
    return render(await call.services.regions.get(call.path("id"), call.caller))


@router.route(
    "PATCH",
    "/api/regions/{id}",
    body=RegionPatch,
    response=RegionK,
    access="admin",
    errors={
        400: "Invalid request or duplicate identifier",
        403: "Forbidden",
        404: "Region or fallback region not found",
    },
)
async def update_region(call: Call, body: RegionPatch) -> RegionK:
    """Change a region's fields; a fallback cycle is allowed (placement stops at a repeat)."""
    return render(await call.services.regions.update(call.path("id"), body.columns()))


@router.route(
    "DELETE",
    "/api/regions/{id}",
    access="admin",
    status=204,
    errors={
        400: "Cannot delete region with assigned nodes or used as fallback",
        403: "Forbidden",
        404: "Region not found",
    },
)
async def delete_region(call: Call) -> None:
    """Delete a region without nodes that no other region falls back to."""
    await call.services.regions.delete(call.path("id"))


@router.route(
    "GET",
    "/api/regions/{id}/allocations",
    response=list[UnassignedAllocation],
    errors={404: "Region not found"},
)
async def unassigned_allocations(call: Call) -> list[UnassignedAllocation]:
    """The region's allocations that no server holds."""
    found = await call.services.regions.unassigned_allocations(call.caller, call.path("id"))
    return [
        UnassignedAllocation(
            **AllocationK.of(a).model_dump(), node=NodeRef(id=n.id, name=n.name, fqdn=n.address)
        )
        for a, n in found
    ]


class NodeRegion(Body):
    regionId: uuid.UUID | None = Field(description="The region to put the node in; null takes it out of any.")


@router.route(
    "PATCH",
    "/api/nodes/{id}/region",
    body=NodeRegion,
    response=NodeBase,
    access="admin",
    errors={400: "Invalid request or region not found", 403: "Forbidden", 404: "Node not found"},
)
async def assign_region(call: Call, body: NodeRegion) -> NodeBase:
    """Put a node in a region (or in none, with null), as the Kyro frontend assigns it. Instances already
    on it keep the region they were placed in."""
    region_id = str(body.regionId) if body.regionId is not None else None
    view = await call.services.nodes.update(call.caller, call.path("id"), {"region_id": region_id})
    n = view.node
    return NodeBase(
        id=n.id,
        name=n.name,
        fqdn=n.address,
        port=n.port,
        regionId=n.region_id,
        isOnline=view.status is NodeStatus.READY,
        lastChecked=iso(view.last_heartbeat),
        createdAt=iso(n.created_at),
        updatedAt=iso(n.updated_at),
    )
