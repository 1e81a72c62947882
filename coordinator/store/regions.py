"""Regions, the placement snapshot and the placement claim."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.domain.records import LIVE_STATES
from coordinator.placement.scheduler import NodeInfo, RegionInfo
from coordinator.store.engine import Store
from coordinator.store.rows import record_from_row
from coordinator.store.tables import allocations, instances, nodes, regions


@dataclass(frozen=True, slots=True)
class RegionRecord:
    id: str
    name: str
    identifier: str
    country_id: str | None
    fallback_region_id: str | None
    server_limit: int
    live_count: int
    created_at: float
    updated_at: float

    def info(self) -> RegionInfo:
        return RegionInfo(
            self.id,
            self.identifier,
            self.server_limit,
            self.live_count,
            self.fallback_region_id,
            self.country_id,
        )


def _region(row: Row[Any]) -> RegionRecord:
    return record_from_row(RegionRecord, row)


async def list_regions(conn: AsyncConnection) -> list[RegionRecord]:
    rows = await conn.execute(select(regions).order_by(regions.c.created_at, regions.c.identifier))
    return [_region(r) for r in rows]


async def get_region(conn: AsyncConnection, key: str) -> RegionRecord | None:
    """By id or identifier."""
    row = (
        await conn.execute(select(regions).where(or_(regions.c.id == key, regions.c.identifier == key)))
    ).first()
    return _region(row) if row else None


async def regions_in_country(conn: AsyncConnection, country_id: str) -> list[RegionRecord]:
    rows = await conn.execute(
        select(regions)
        .where(func.upper(regions.c.country_id) == country_id.upper())
        .order_by(regions.c.identifier)
    )
    return [_region(r) for r in rows]


async def insert_region(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(regions).values(**values))


async def update_region(conn: AsyncConnection, region_id: str, values: dict[str, Any]) -> None:
    await conn.execute(update(regions).where(regions.c.id == region_id).values(**values))


async def delete_region(conn: AsyncConnection, region_id: str) -> None:
    """Its instances (locked in id order, before the region: the order in store/claims.py) keep their rows
    without the region."""
    await conn.execute(
        select(instances.c.id)
        .where(instances.c.region_id == region_id)
        .order_by(instances.c.id)
        .with_for_update()
    )
    await conn.execute(update(instances).where(instances.c.region_id == region_id).values(region_id=None))
    await conn.execute(delete(regions).where(regions.c.id == region_id))


async def identifier_taken(conn: AsyncConnection, identifier: str, other_than: str | None = None) -> bool:
    query = select(regions.c.id).where(regions.c.identifier == identifier)
    if other_than is not None:
        query = query.where(regions.c.id != other_than)
    return (await conn.execute(query)).first() is not None


async def fallback_users(conn: AsyncConnection, region_id: str) -> list[str]:
    """Identifiers of the regions that fall back to this one."""
    rows = await conn.execute(
        select(regions.c.identifier).where(
            regions.c.fallback_region_id == region_id, regions.c.id != region_id
        )
    )
    return [r.identifier for r in rows]


async def live_counts(conn: AsyncConnection) -> dict[str, int]:
    """Live instances per region, counted from the instances themselves (what the stats show)."""
    rows = await conn.execute(
        select(instances.c.region_id, func.count())
        .where(_live(), instances.c.region_id.is_not(None))
        .group_by(instances.c.region_id)
    )
    return {r[0]: int(r[1]) for r in rows}


async def node_count(conn: AsyncConnection, region_id: str) -> int:
    found = await conn.execute(select(func.count()).select_from(nodes).where(nodes.c.region_id == region_id))
    return int(found.scalar_one())


# ---------------------------------------------------------------- placement


def _live() -> Any:
    return instances.c.state.in_([s.value for s in LIVE_STATES])


def _node_info(n: Row[Any], ready: set[str] | None, free_wanted: frozenset[int] = frozenset()) -> NodeInfo:
    return NodeInfo(
        id=n.id,
        region_id=n.region_id,
        ready=ready is None or n.id in ready,
        maintenance=bool(n.maintenance),
        tags=frozenset(n.tags or ()),
        memory_mib=n.memory_mib,
        cpu_percent=n.cpu_count * 100,
        disk_mib=n.disk_mib,
        overallocation_pct=n.overallocation_pct,
        used_memory_mib=n.used_memory_mib,
        used_cpu_percent=n.used_cpu_percent,
        used_disk_mib=n.used_disk_mib,
        free_port_count=n.free_allocations,
        free_ports=free_wanted,
        name=n.name,
        organization_id=n.organization_id,
        address=n.address,
    )


async def node_infos(
    conn: AsyncConnection,
    *,
    region_ids: Sequence[str] | None = None,
    node_id: str | None = None,
    ports: Sequence[int] = (),
    ready: set[str] | None = None,
) -> list[NodeInfo]:
    """Nodes with what they have left, from the counters on their rows, and which of ``ports`` are free.
    ``ready`` is the set of node ids the fleet calls Ready (None: all of them)."""
    query = select(nodes)
    if region_ids is not None:
        query = query.where(nodes.c.region_id.in_(list(region_ids)))
    if node_id is not None:
        query = query.where(nodes.c.id == node_id)
    rows = (await conn.execute(query)).all()
    free = await free_ports(conn, region_ids, ports, node_id=node_id) if ports and rows else {}
    return [_node_info(n, ready, free.get(n.id, frozenset())) for n in rows]


async def free_ports(
    conn: AsyncConnection, region_ids: Sequence[str] | None, ports: Sequence[int], node_id: str | None = None
) -> dict[str, frozenset[int]]:
    """Which of ``ports`` are free allocations, per node (of those regions, or of that node)."""
    query = select(allocations.c.node_id, allocations.c.port).where(
        allocations.c.instance_id.is_(None), allocations.c.port.in_(list(ports))
    )
    if region_ids is not None:
        query = query.join(nodes, nodes.c.id == allocations.c.node_id).where(
            nodes.c.region_id.in_(list(region_ids))
        )
    if node_id is not None:
        query = query.where(allocations.c.node_id == node_id)
    found: dict[str, set[int]] = {}
    for r in await conn.execute(query):
        found.setdefault(r.node_id, set()).add(r.port)
    return {node: frozenset(p) for node, p in found.items()}


class SnapshotReads:
    """What the placement snapshot reads, from this store (placement/snapshot.py SnapshotSource)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def regions_and_nodes(
        self, region_ids: Sequence[str]
    ) -> tuple[dict[str, RegionInfo], list[NodeInfo]]:
        async with self.store.read() as conn:
            found = {r.id: r.info() for r in await list_regions(conn)}
            infos = await node_infos(conn, region_ids=region_ids) if region_ids else []
        return found, infos

    async def node_and_region(
        self, node_id: str, region_id: str
    ) -> tuple[NodeInfo | None, RegionInfo | None]:
        async with self.store.read() as conn:
            infos = await node_infos(conn, node_id=node_id)
            region = await get_region(conn, region_id)
        return (infos[0] if infos else None), (region.info() if region is not None else None)
