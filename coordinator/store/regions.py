"""Regions, the placement snapshot and the placement claim."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.model import LIVE_STATES, Allocation, Instance
from coordinator.placement import NodeInfo, RegionInfo
from coordinator.store.instances import insert_instance
from coordinator.store.nodes import allocation_from_row
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
    return RegionRecord(
        row.id,
        row.name,
        row.identifier,
        row.country_id,
        row.fallback_region_id,
        row.server_limit,
        row.live_count,
        row.created_at,
        row.updated_at,
    )


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
    free_wanted: dict[str, set[int]] = {}
    if ports and rows:
        found = await conn.execute(
            select(allocations.c.node_id, allocations.c.port).where(
                allocations.c.node_id.in_([r.id for r in rows]),
                allocations.c.instance_id.is_(None),
                allocations.c.port.in_(list(ports)),
            )
        )
        for r in found:
            free_wanted.setdefault(r.node_id, set()).add(r.port)
    return [_node_info(n, ready, frozenset(free_wanted.get(n.id, ()))) for n in rows]


class ClaimLost(Exception):
    """The candidate was good in the snapshot but not any more (another claim won); try the next one.
    Raised inside the claim's transaction, so nothing of the attempt is kept."""


def _within(used: Any, amount: int, capacity: Any) -> Any:
    return used + amount <= capacity * (100 + nodes.c.overallocation_pct) / 100.0


async def claim(
    conn: AsyncConnection, inst: Instance, *, ports: Sequence[int], port_count: int, primary: int | None
) -> list[Allocation]:
    """Place ``inst`` (node_id and region_id set) in one transaction of guarded writes, each a re-check
    of the snapshot the decision came from: a place in the region (the database caps the counter at
    serverLimit), the node's memory, CPU, disk and free allocations, then the allocations themselves
    (assigned only where still free). Any miss raises ClaimLost and the transaction rolls back whole."""
    need = len(ports) if ports else port_count
    if inst.region_id is not None:
        took = await conn.execute(
            update(regions)
            .where(regions.c.id == inst.region_id, regions.c.live_count < regions.c.server_limit)
            .values(live_count=regions.c.live_count + 1)
        )
        if took.rowcount != 1:
            raise ClaimLost("region at its serverLimit")
    fits = await conn.execute(
        update(nodes)
        .where(
            nodes.c.id == inst.node_id,
            nodes.c.maintenance.is_(False),
            nodes.c.free_allocations >= need,
            _within(nodes.c.used_memory_mib, inst.memory_mib, nodes.c.memory_mib),
            _within(nodes.c.used_cpu_percent, inst.cpu_percent, nodes.c.cpu_count * 100),
            _within(nodes.c.used_disk_mib, inst.disk_mib, nodes.c.disk_mib),
        )
        .values(
            used_memory_mib=nodes.c.used_memory_mib + inst.memory_mib,
            used_cpu_percent=nodes.c.used_cpu_percent + inst.cpu_percent,
            used_disk_mib=nodes.c.used_disk_mib + inst.disk_mib,
            free_allocations=nodes.c.free_allocations - need,
        )
    )
    if fits.rowcount != 1:
        raise ClaimLost("node resources or allocations taken")
    await insert_instance(conn, inst)
    pick = select(allocations.c.id).where(
        allocations.c.node_id == inst.node_id, allocations.c.instance_id.is_(None)
    )
    pick = pick.where(allocations.c.port.in_(list(ports))) if ports else pick
    pick = pick.order_by(allocations.c.port, allocations.c.bind_address).limit(need)
    primary_port = primary if primary is not None else (ports[0] if ports else None)
    # Ids first, then the guarded UPDATE by primary key: with the subquery inline, SQLite drives the UPDATE
    # through the instance_id index and walks every free allocation of the fleet.
    ids = list((await conn.execute(pick)).scalars())
    claimed = (
        await conn.execute(
            update(allocations)
            .where(allocations.c.id.in_(ids), allocations.c.instance_id.is_(None))
            .values(
                instance_id=inst.id,
                instance_released=False,
                is_primary=(allocations.c.port == primary_port) if primary_port is not None else need == 1,
                updated_at=inst.created_at,
            )
            .returning(allocations)
        )
    ).all()
    if len(claimed) != need or (ports and len({r.port for r in claimed}) != len(ports)):
        raise ClaimLost("allocations taken")
    held = sorted((allocation_from_row(r) for r in claimed), key=lambda a: (not a.primary, a.port))
    if primary_port is None and need > 1:
        # Several free allocations and no primary named: the lowest port is the primary.
        await conn.execute(update(allocations).where(allocations.c.id == held[0].id).values(is_primary=True))
        held[0].primary = True
    return held
