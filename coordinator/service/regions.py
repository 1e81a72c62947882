"""Region use cases (the regions dialect's, and placement's view of them). Messages are the original
system's own words where it had them (seeds/README.md)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from coordinator.domain.records import Allocation, Node, NodeStatus, Principal
from coordinator.service.core import Core
from coordinator.service.errors import BadRequest, NotFound, ServiceError
from coordinator.store import instances as instances_store
from coordinator.store import nodes as nodes_store
from coordinator.store import regions as regions_store
from coordinator.store.regions import RegionRecord

DEFAULT_SERVER_LIMIT = 100


@dataclass(frozen=True, slots=True)
class RegionStats:
    server_count: int
    node_count: int
    online_node_count: int

    def at_capacity(self, limit: int) -> bool:
        return self.server_count >= limit


@dataclass(frozen=True, slots=True)
class NodeInRegion:
    node: Node
    online: bool
    last_checked: float | None
    allocations: list[Allocation]


@dataclass(frozen=True, slots=True)
class RegionView:
    region: RegionRecord
    stats: RegionStats
    nodes: list[NodeInRegion]
    #: The region it falls back to (None: none, or it no longer exists).
    fallback: RegionRecord | None = None
    #: Instances holding allocations here that the caller may not know of (another organization's):
    #: their allocations show as assigned, without saying to what.
    foreign: frozenset[str] = frozenset()


def not_found(region_id: str) -> NotFound:
    return NotFound(
        f"region_id: region {region_id} does not exist", field="region_id", reason="region.not_found"
    )


def identifier_taken() -> BadRequest:
    return BadRequest(
        "identifier: a region with this identifier exists",
        field="identifier",
        reason="region.identifier_taken",
    )


def fallback_not_found(fallback: str, kind: type[BadRequest] | type[NotFound]) -> ServiceError:
    """Kyro answers 400 for it on create and 404 on update."""
    return kind(
        f"fallback_region_id: region {fallback} does not exist",
        field="fallback_region_id",
        reason="region.fallback_not_found",
    )


class RegionService:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def _views(self, caller: Principal | None, only: str | None = None) -> list[RegionView]:
        """Regions with stats computed from live data: live instances counted, nodes judged by the fleet.
        ``caller`` (None: everything, for an admin's writes): a non-admin sees the nodes /api/nodes shows
        them (the shared fleet and their organization's), and which instance holds an allocation only for
        their organization's instances."""
        fleet = self.core.fleet
        organization = None if caller is None or caller.admin else caller.organization_id
        async with self.core.store.read() as conn:
            every = {r.id: r for r in await regions_store.list_regions(conn)}
            found = [r for r in every.values() if only is None or r.id == only]
            counts = await regions_store.live_counts(conn)
            members = [
                n
                for n in await nodes_store.list_nodes(conn, organization_id=organization)
                if n.region_id in {r.id for r in found}
            ]
            allocations = await nodes_store.allocations_of(conn, [n.id for n in members])
            foreign: frozenset[str] = frozenset()
            if organization is not None:
                held = {a.instance_id for listed in allocations.values() for a in listed if a.instance_id}
                ours = await instances_store.of_organization(conn, held, organization)
                foreign = frozenset(held - ours)
        views = []
        for region in found:
            in_region = [
                NodeInRegion(
                    node,
                    fleet.status_of(node) is NodeStatus.READY,
                    fleet.last_heartbeat(node),
                    allocations.get(node.id, []),
                )
                for node in members
                if node.region_id == region.id
            ]
            stats = RegionStats(
                server_count=counts.get(region.id, 0),
                node_count=len(in_region),
                online_node_count=sum(1 for m in in_region if m.online),
            )
            fallback = every.get(region.fallback_region_id or "")
            views.append(RegionView(region, stats, in_region, fallback, foreign))
        return views

    async def list_views(self, caller: Principal) -> list[RegionView]:
        return await self._views(caller)

    async def get(self, region_id: str, caller: Principal | None = None) -> RegionView:
        views = await self._views(caller, region_id)
        if not views:
            raise not_found(region_id)
        return views[0]

    async def create(self, values: dict[str, Any]) -> RegionView:
        now = self.core.clock()
        region_id = str(uuid.uuid4())
        async with self.core.store.write() as conn:
            if await regions_store.identifier_taken(conn, values["identifier"]):
                raise identifier_taken()
            fallback = values.get("fallback_region_id")
            if fallback is not None and await regions_store.get_region(conn, fallback) is None:
                raise fallback_not_found(fallback, BadRequest)
            await regions_store.insert_region(
                conn,
                {
                    "id": region_id,
                    "server_limit": DEFAULT_SERVER_LIMIT,
                    **values,
                    "live_count": 0,
                    "created_at": now,
                    "updated_at": now,
                },
            )
        self.core.placement_changed()
        return await self.get(region_id)

    async def update(self, region_id: str, values: dict[str, Any]) -> RegionView:
        async with self.core.store.write() as conn:
            region = await regions_store.get_region(conn, region_id)
            if region is None or region.id != region_id:
                raise not_found(region_id)
            identifier = values.get("identifier")
            if identifier is not None and await regions_store.identifier_taken(
                conn, identifier, other_than=region_id
            ):
                raise identifier_taken()
            if "fallback_region_id" in values and values["fallback_region_id"] is not None:
                fallback = values["fallback_region_id"]
                if fallback == region_id:
                    raise BadRequest(
                        "fallback_region_id: a region cannot be its own fallback",
                        field="fallback_region_id",
                        reason="region.own_fallback",
                    )
                if await regions_store.get_region(conn, fallback) is None:
                    raise fallback_not_found(fallback, NotFound)
            limit = values.get("server_limit")
            if limit is not None and limit < region.live_count:
                raise BadRequest(
                    f"server_limit: {region.live_count} servers already live in this region",
                    field="server_limit",
                )
            try:
                await regions_store.update_region(
                    conn, region_id, {**values, "updated_at": self.core.clock()}
                )
            except IntegrityError as exc:  # the limit raced a deploy; the database kept the invariant
                raise BadRequest(
                    "server_limit: lower than the servers live in this region", field="server_limit"
                ) from exc
        self.core.placement_changed()
        return await self.get(region_id)

    async def delete(self, region_id: str) -> None:
        async with self.core.store.write() as conn:
            region = await regions_store.get_region(conn, region_id)
            if region is None or region.id != region_id:
                raise not_found(region_id)
            if await regions_store.node_count(conn, region_id):
                raise BadRequest(
                    f"region_id: region {region_id} has nodes; move or delete them first",
                    field="region_id",
                    reason="region.has_nodes",
                )
            users = await regions_store.fallback_users(conn, region_id)
            if users:
                raise BadRequest(
                    f"region_id: region {region_id} is the fallback of {', '.join(users)}",
                    field="region_id",
                    reason="region.is_fallback",
                    facts={"regions": ", ".join(users)},
                )
            await regions_store.delete_region(conn, region_id)
        self.core.placement_changed()

    async def unassigned_allocations(
        self, caller: Principal, region_id: str
    ) -> list[tuple[Allocation, Node]]:
        view = await self.get(region_id, caller)
        return [(a, m.node) for m in view.nodes for a in m.allocations if a.instance_id is None]
