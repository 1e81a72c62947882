"""Moorage's own node routes (beside the panel dialect's): change a node, manage its allocations, issue
join tokens."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from coordinator.api.dialects.panel_models import AllocationOut, Body, MiB, NodeOut, Port, Processor
from coordinator.api.fields import Address, BindAddress, Bool, Int, OrganizationId, Text
from coordinator.api.routing import Call, Router
from coordinator.domain.times import iso
from coordinator.service.nodes import MAX_ALLOCATIONS_PER_CALL

router = Router("nodes")


class JoinToken(BaseModel):
    joinToken: str = Field(description="One-time enrollment token; shown only in this answer.")
    expiresAt: str
    agentCommand: str


class NodePatch(Body):
    name: Text | None = Field(None, min_length=1, max_length=100)
    address: Address | None = Field(None, min_length=1, max_length=255)
    port: Port | None = None
    regionId: str | None = Field(None, description="The node's region; null takes it out of any region.")
    tags: list[Text] | None = None
    ram: MiB | None = None
    disk: MiB | None = None
    processor: Processor | None = Field(
        None, description="Cores, or the processor as text (the cores then stay as they are)."
    )
    overallocation: Int | None = Field(None, ge=0, le=1000, description="Percent above capacity to allow.")
    maintenance: Bool | None = Field(None, description="Nothing new is placed on a node in maintenance.")
    organization: OrganizationId | None = Field(
        None,
        description="Dedicate the node to this organization; null returns it to the shared fleet. Instances"
        " already on it stay.",
    )

    def columns(self) -> dict[str, Any]:
        mapping = {
            "name": "name",
            "address": "address",
            "port": "port",
            "regionId": "region_id",
            "tags": "tags",
            "ram": "memory_mib",
            "disk": "disk_mib",
            "processor": "cpu_count",  # text goes to the description instead (below)
            "overallocation": "overallocation_pct",
            "maintenance": "maintenance",
            "organization": "organization_id",
        }
        columns = {
            mapping[k]: v
            for k, v in self.model_dump(exclude_unset=True).items()
            if v is not None or k in ("regionId", "organization")
        }
        if isinstance(columns.get("cpu_count"), str):
            columns["processor"] = columns.pop("cpu_count")
        return columns


class PortRange(Body):
    start: Port
    end: Port


class AllocationCreate(Body):
    bindAddress: BindAddress = Field("0.0.0.0", max_length=45, description="An IPv4 or IPv6 address.")
    port: Port | None = None
    portRange: PortRange | None = None

    @model_validator(mode="after")
    def _one(self) -> AllocationCreate:
        if (self.port is None) == (self.portRange is None):
            raise ValueError("give port or portRange (one of them)")
        if self.portRange is not None:
            r = self.portRange
            if r.end < r.start:
                raise ValueError("portRange: end is before start")
            if r.end - r.start + 1 > MAX_ALLOCATIONS_PER_CALL:
                raise ValueError(f"portRange: at most {MAX_ALLOCATIONS_PER_CALL} ports per call")
        return self

    def ports(self) -> tuple[int, ...]:
        if self.portRange is not None:
            return tuple(range(self.portRange.start, self.portRange.end + 1))
        assert self.port is not None
        return (self.port,)


class AllocationPatch(Body):
    alias: Text | None = Field(None, max_length=255)
    notes: str | None = Field(None, max_length=4000)


@router.route(
    "POST",
    "/api/nodes/{id}/join-token",
    response=JoinToken,
    status=201,
    access="admin",
    errors={404: "No such node"},
)
async def issue_join_token(call: Call) -> JoinToken:
    """A fresh join token for the node; every earlier one stops working."""
    token, expires = await call.services.nodes.issue_join_token(call.path("id"))
    return JoinToken(
        joinToken=token, expiresAt=iso(expires) or "", agentCommand=call.services.nodes.agent_command(token)
    )


@router.route(
    "PATCH",
    # Not the panel's /api/nodes/create and /api/nodes/delete (they would answer OPTIONS with PATCH too).
    "/api/nodes/{id:(?!create$|delete$)[^/]+}",
    body=NodePatch,
    response=NodeOut,
    access="admin",
    errors={400: "Invalid field", 404: "No such node"},
)
async def update_node(call: Call, body: NodePatch) -> NodeOut:
    """Change a node: region, capacity, overallocation, maintenance, description."""
    view = await call.services.nodes.update(call.caller, call.path("id"), body.columns())
    return NodeOut.of(view, call.services.clock())


@router.route(
    "GET",
    "/api/nodes/{id}/allocations",
    response=list[AllocationOut],
    access="admin",
    errors={404: "No such node"},
)
async def list_allocations(call: Call) -> list[AllocationOut]:
    """The node's allocations, assigned or not."""
    _, allocations = await call.services.nodes.get(call.path("id"))
    return [AllocationOut.of(a) for a in allocations]


@router.route(
    "POST",
    "/api/nodes/{id}/allocations",
    body=AllocationCreate,
    response=list[AllocationOut],
    status=201,
    access="admin",
    errors={404: "No such node", 409: "Some ports exist already"},
)
async def add_allocations(call: Call, body: AllocationCreate) -> list[AllocationOut]:
    """Add one port or a range (at most 1000) on a bind address; clashing ports are named, none added."""
    found = await call.services.nodes.add_allocations(
        call.caller, call.path("id"), body.bindAddress, body.ports()
    )
    return [AllocationOut.of(a) for a in found]


@router.route(
    "PATCH",
    "/api/nodes/{id}/allocations/{allocationId}",
    body=AllocationPatch,
    response=AllocationOut,
    access="admin",
    errors={404: "No such allocation"},
)
async def update_allocation(call: Call, body: AllocationPatch) -> AllocationOut:
    """Set an allocation's alias and notes."""
    found = await call.services.nodes.update_allocation(
        call.caller, call.path("id"), call.path("allocationId"), body.model_dump(exclude_unset=True)
    )
    return AllocationOut.of(found)


@router.route(
    "DELETE",
    "/api/nodes/{id}/allocations/{allocationId}",
    access="admin",
    errors={404: "No such allocation", 409: "Assigned to an instance"},
)
async def delete_allocation(call: Call) -> None:
    """Remove an allocation no instance holds."""
    await call.services.nodes.delete_allocation(call.caller, call.path("id"), call.path("allocationId"))
