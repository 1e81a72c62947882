"""The panel dialect (seed 001, Skyport): paths, methods, fields and status codes as the document has
them, including its odd success codes (201 for getUser and the deletes). Thin: validate, call a use case,
render."""

from __future__ import annotations

from coordinator.api.dialects.panel_models import (
    AllocationOut,
    Deploy,
    InstanceId,
    InstanceOut,
    Listing,
    NodeCreate,
    NodeCreated,
    NodeDelete,
    NodeDeleted,
    NodeOut,
    Placement,
    Power,
    SkyportNode,
    UserCreate,
    UserCreated,
    UserId,
    UserLookup,
    UserOut,
)
from coordinator.api.routing import Call, Router
from coordinator.domain.records import Instance, InstanceState
from coordinator.domain.times import iso
from coordinator.service.access import NewUser
from coordinator.service.deploy import DeployOrder
from coordinator.service.nodes import NodeOrder, parse_port_ranges

router = Router("panel")
# The document answers 400 for an instance or node it cannot find on its body-addressed routes.
NOT_FOUND_IS_400 = {404: 400}
#: A panel user's key sees only that user's instances (an admin's: all), as Skyport's users see theirs.
OWN = True

# ---------------------------------------------------------------- users


@router.route("GET", "/api/users", response=list[UserOut])
async def list_users(call: Call) -> list[UserOut]:
    """Users the caller may see (an admin: all; others: their organization's). Never a password hash."""
    return [UserOut.of(u) for u in await call.services.access.list_users(call.caller)]


@router.route(
    "POST",
    "/api/getUser",
    body=UserLookup,
    response=UserOut,
    status=201,
    errors={400: "Missing or invalid parameters", 404: "User not found"},
)
async def get_user(call: Call, body: UserLookup) -> UserOut:
    """Find a user by email or username."""
    return UserOut.of(await call.services.access.find_user(call.caller, body.type, body.value))


@router.route(
    "POST",
    "/api/auth/create-user",
    body=UserCreate,
    response=UserCreated,
    status=201,
    access="admin",
    errors={400: "Missing or malformed parameters", 409: "User already exists"},
)
async def create_user(call: Call, body: UserCreate) -> UserCreated:
    """Create a user; the password is stored as an argon2id hash, never as given."""
    user = await call.services.access.create_user(
        call.caller,
        NewUser(body.username, body.email, body.password, body.userId, body.admin, body.organization),
    )
    return UserCreated(userId=user.id, username=user.username, email=user.email, admin=user.admin)


# ---------------------------------------------------------------- nodes


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
    cpus, processor = body.cpus_and_processor()
    order = NodeOrder(
        name=body.name,
        address=body.address,
        port=body.port,
        memory_mib=body.ram,
        disk_mib=body.disk,
        cpu_count=cpus,
        processor=processor,
        tags=body.tag_list(),
        region_id=body.regionId,
        bind_address=alloc.bindAddress if alloc else "0.0.0.0",
        ports=parse_port_ranges(alloc.ports, "allocations.ports") if alloc else (),
        organization_id=body.organization,
    )
    created = await call.services.nodes.create(call.caller, order)
    base = NodeOut.of(created.view, call.services.clock())
    return NodeCreated(
        **base.model_dump(),
        joinToken=created.join_token,
        joinTokenExpiresAt=iso(created.join_token_expires_at) or "",
        agentCommand=created.agent_command,
        allocationList=[AllocationOut.of(a) for a in created.allocations],
    )


@router.route("GET", "/api/nodes", response=list[NodeOut])
async def list_nodes(call: Call) -> list[NodeOut]:
    """Nodes with their status, heartbeat age, capacity and allocation counts: every node for an admin;
    for others the shared fleet and their organization's dedicated nodes."""
    now = call.services.clock()
    return [NodeOut.of(v, now) for v in await call.services.nodes.list_views(call.caller)]


@router.route(
    "DELETE",
    "/api/nodes/delete",
    body=NodeDelete,
    response=NodeDeleted,
    status=201,
    access="admin",
    errors={400: "Invalid or missing node ID, or live instances without force"},
    status_map=NOT_FOUND_IS_400,
)
async def delete_node(call: Call, body: NodeDelete) -> NodeDeleted:
    """Delete a node and void its certificate (its agent's session is closed at once)."""
    released = await call.services.nodes.delete(call.caller, body.nodeId, force=body.force)
    return NodeDeleted(message="Node deleted", nodeId=body.nodeId, releasedInstances=released)


# ---------------------------------------------------------------- instances


async def render(call: Call, found: list[Instance], placement: Placement | None = None) -> list[InstanceOut]:
    """Skyport's records: each with its node embedded (one read for all of them)."""
    nodes = await call.services.nodes.statuses({i.node_id for i in found if i.node_id})
    return [
        InstanceOut.of(i, placement, SkyportNode.of(*nodes[i.node_id]) if i.node_id in nodes else None)
        for i in found
    ]


@router.route(
    "POST",
    "/api/instances/deploy",
    body=Deploy,
    response=InstanceOut,
    status=201,
    errors={
        400: "Missing or invalid parameters",
        409: "Ports taken",
        503: "No Ready node in the region chain",
    },
)
async def deploy(call: Call, body: Deploy) -> InstanceOut:
    """Deploy on a node (nodeId) or by placement in a region and its fallbacks (regionId: id or identifier).
    It starts pending and runs once its agent confirms it; the answer says which region served."""
    order = DeployOrder(
        image=body.image,
        catalog_image=body.imagename,
        memory_mib=body.memory,
        cpu_percent=body.cpu,
        node_id=body.nodeId,
        region=body.regionId,
        name=body.name,
        ports=tuple(body.ports),
        primary=body.primary,
        owner_id=body.user,
        variables=body.variables,
        disk_mib=body.disk,
        tags=frozenset(body.tags),
        bandwidth_mbps=body.bandwidth,
    )
    deployed = await call.services.deploys.deploy(call.caller, order)
    placement = Placement(region=deployed.region_identifier, fallbackUsed=deployed.fallback_used)
    return (await render(call, [deployed.instance], placement))[0]


@router.route(
    "POST",
    "/api/getInstance",
    body=InstanceId,
    response=InstanceOut,
    errors={400: "Missing instance ID or instance not found"},
    status_map=NOT_FOUND_IS_400,
)
async def get_instance(call: Call, body: InstanceId) -> InstanceOut:
    """One instance with its lifecycle state (a released one too: its history)."""
    return (await render(call, [await call.services.instances.get(call.caller, body.id, own_only=OWN)]))[0]


@router.route("GET", "/api/instances", query=Listing, response=list[InstanceOut])
async def list_instances(call: Call, query: Listing) -> list[InstanceOut]:
    """Every instance for an admin; a user's own instances otherwise. Released ones only with
    `?released=true` (Skyport forgot a deleted instance; its dashboards count what is listed)."""
    found = await call.services.instances.list_visible(call.caller, own_only=OWN)
    return await render(call, [i for i in found if query.released or i.state is not InstanceState.RELEASED])


@router.route(
    "DELETE",
    "/api/instance/delete",
    body=InstanceId,
    response=InstanceOut,
    status=201,
    errors={400: "Missing ID or instance not found"},
    status_map=NOT_FOUND_IS_400,
)
async def delete_instance(call: Call, body: InstanceId) -> InstanceOut:
    """Remove the container and free its allocations; the row stays (released) for its history."""
    return (await render(call, [await call.services.instances.delete(call.caller, body.id, own_only=OWN)]))[0]


@router.route(
    "POST",
    "/api/getUserInstance",
    body=UserId,
    query=Listing,
    response=list[InstanceOut],
    errors={400: "Missing user ID or user not found", 403: "Another user's instances (admins only)"},
    status_map=NOT_FOUND_IS_400,
)
async def user_instances(call: Call, body: UserId, query: Listing) -> list[InstanceOut]:
    """The instances a user owns; released ones only with `?released=true` (dashboards add up the
    Memory and Cpu of what this lists against the user's limits)."""
    user = await call.services.access.find_user(call.caller, "user_id", body.userId, field="userId")
    found = await call.services.instances.list_visible(call.caller, owner_id=user.id, own_only=OWN)
    return await render(call, [i for i in found if query.released or i.state is not InstanceState.RELEASED])


@router.route(
    "POST",
    "/api/instances/suspend/{id}",
    response=InstanceOut,
    access="admin",
    errors={400: "Missing instance ID or instance not found", 409: "The instance cannot be suspended now"},
    status_map=NOT_FOUND_IS_400,
)
async def suspend(call: Call) -> InstanceOut:
    """Stop the instance and refuse every start, restart and redeploy until unsuspend (it survives restarts
    of the coordinator and the agent: the suspension is the instance's desired state)."""
    return (await render(call, [await call.services.instances.suspend(call.caller, call.path("id"))]))[0]


@router.route(
    "POST",
    "/api/instances/unsuspend/{id}",
    response=InstanceOut,
    access="admin",
    errors={400: "Missing instance ID or instance not found"},
    status_map=NOT_FOUND_IS_400,
)
async def unsuspend(call: Call) -> InstanceOut:
    """Lift the suspension; the instance starts again."""
    return (await render(call, [await call.services.instances.unsuspend(call.caller, call.path("id"))]))[0]


@router.route(
    "POST",
    "/api/instances/{id}/power",
    body=Power,
    response=InstanceOut,
    errors={
        400: "Invalid action",
        404: "Instance not found",
        409: "Not possible in the instance's state (suspended, being created or deleted, failed)",
    },
)
async def power(call: Call, body: Power) -> InstanceOut:
    """start, stop, restart or kill; answered once the agent has acted (or after a bounded wait)."""
    powered = await call.services.instances.power(call.caller, call.path("id"), body.action, own_only=OWN)
    return (await render(call, [powered]))[0]
