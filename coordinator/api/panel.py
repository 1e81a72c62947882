"""The panel dialect (seed 001, Skyport): paths, methods, fields and status codes as the document has
them. Thin: validate, call a use case, render."""

from __future__ import annotations

from coordinator.api.panel_models import (
    AllocationOut,
    Deploy,
    InstanceId,
    InstanceOut,
    NodeCreate,
    NodeCreated,
    NodeOut,
    iso,
)
from coordinator.api.routing import Call, Router
from coordinator.service.instances import DeployOrder
from coordinator.service.nodes import NodeOrder, parse_port_ranges

# The document answers 400 for "instance not found" on its body-addressed routes.
router = Router("panel", status_map={404: 400})


@router.route(
    "POST",
    "/api/nodes/create",
    body=NodeCreate,
    response=NodeCreated,
    status=201,
    access="admin",
    errors={400: "Missing or invalid parameters"},
)
async def create_node(call: Call, body: NodeCreate) -> NodeCreated:
    """Create a node; the answer carries its one-time join token and the command to run on the host."""
    alloc = body.allocations
    order = NodeOrder(
        name=body.name,
        address=body.address,
        port=body.port,
        memory_mib=body.ram,
        disk_mib=body.disk,
        cpu_count=body.processor,
        tags=body.tag_list(),
        region_id=body.regionId,
        bind_address=alloc.bindAddress if alloc else "0.0.0.0",
        ports=parse_port_ranges(alloc.ports, "allocations.ports") if alloc else (),
    )
    created = await call.services.nodes.create(call.caller, order)
    base = NodeOut.of(created.view, call.services.core.clock())
    return NodeCreated(
        **base.model_dump(),
        joinToken=created.join_token,
        joinTokenExpiresAt=iso(created.join_token_expires_at) or "",
        agentCommand=created.agent_command,
        allocationList=[AllocationOut.of(a) for a in created.allocations],
    )


@router.route("GET", "/api/nodes", response=list[NodeOut])
async def list_nodes(call: Call) -> list[NodeOut]:
    """Every node with its status, heartbeat age, capacity and allocation counts."""
    now = call.services.core.clock()
    return [NodeOut.of(v, now) for v in await call.services.nodes.list_views()]


@router.route(
    "POST",
    "/api/instances/deploy",
    body=Deploy,
    response=InstanceOut,
    status=201,
    errors={400: "Missing or invalid parameters", 409: "Ports taken"},
)
async def deploy(call: Call, body: Deploy) -> InstanceOut:
    """Deploy an instance on a node; it starts in state pending and runs once its agent confirms it."""
    order = DeployOrder(
        image=body.image,
        memory_mib=body.memory,
        cpu_percent=body.cpu,
        node_id=body.nodeId,
        name=body.name,
        ports=tuple(body.ports),
        primary=body.primary,
        owner_id=body.user,
        variables=body.variables,
    )
    return InstanceOut.of(await call.services.instances.deploy(call.caller, order))


@router.route(
    "POST",
    "/api/getInstance",
    body=InstanceId,
    response=InstanceOut,
    errors={400: "Missing instance ID or instance not found"},
)
async def get_instance(call: Call, body: InstanceId) -> InstanceOut:
    """One instance with its lifecycle state."""
    return InstanceOut.of(await call.services.instances.get(call.caller, body.id))


@router.route("GET", "/api/instances", response=list[InstanceOut])
async def list_instances(call: Call) -> list[InstanceOut]:
    """Every instance the caller may see."""
    return [InstanceOut.of(i) for i in await call.services.instances.list_visible(call.caller)]


@router.route(
    "DELETE",
    "/api/instance/delete",
    body=InstanceId,
    response=InstanceOut,
    status=201,
    errors={400: "Missing ID or instance not found"},
)
async def delete_instance(call: Call, body: InstanceId) -> InstanceOut:
    """Remove the container and free its allocations; the row stays (released) for its history."""
    return InstanceOut.of(await call.services.instances.delete(call.caller, body.id))
