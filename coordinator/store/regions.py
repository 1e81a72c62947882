"""Regions, the placement snapshot and the placement claim."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, case, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.model import LIVE_STATES, Instance
from coordinator.placement import NodeInfo, RegionInfo
from coordinator.store.instances import insert_instance
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


async def node_infos(
    conn: AsyncConnection,
    *,
    region_ids: Sequence[str] | None = None,
    node_id: str | None = None,
    ports: Sequence[int] = (),
    ready: set[str] | None = None,
) -> list[NodeInfo]:
    """Nodes with what they have left: live instances' memory, CPU and disk summed, free allocations
    counted, and which of ``ports`` are free. ``ready`` is the set of node ids the fleet calls Ready."""
    query = select(nodes)
    if region_ids is not None:
        query = query.where(nodes.c.region_id.in_(list(region_ids)))
    if node_id is not None:
        query = query.where(nodes.c.id == node_id)
    node_rows = (await conn.execute(query)).all()
    ids = [r.id for r in node_rows]
    if not ids:
        return []
    usage = {
        r.node_id: r
        for r in await conn.execute(
            select(
                instances.c.node_id,
                func.coalesce(func.sum(instances.c.memory_mib), 0).label("memory"),
                func.coalesce(func.sum(instances.c.cpu_percent), 0).label("cpu"),
                func.coalesce(func.sum(instances.c.disk_mib), 0).label("disk"),
            )
            .where(instances.c.node_id.in_(ids), _live())
            .group_by(instances.c.node_id)
        )
    }
    free_counts = {
        r.node_id: int(r.free)
        for r in await conn.execute(
            select(allocations.c.node_id, func.count().label("free"))
            .where(allocations.c.node_id.in_(ids), allocations.c.instance_id.is_(None))
            .group_by(allocations.c.node_id)
        )
    }
    free_wanted: dict[str, set[int]] = {}
    if ports:
        for r in await conn.execute(
            select(allocations.c.node_id, allocations.c.port).where(
                allocations.c.node_id.in_(ids),
                allocations.c.instance_id.is_(None),
                allocations.c.port.in_(list(ports)),
            )
        ):
            free_wanted.setdefault(r.node_id, set()).add(r.port)
    infos = []
    for n in node_rows:
        used = usage.get(n.id)
        infos.append(
            NodeInfo(
                id=n.id,
                region_id=n.region_id,
                ready=ready is None or n.id in ready,
                maintenance=bool(n.maintenance),
                tags=frozenset(n.tags or ()),
                memory_mib=n.memory_mib,
                cpu_percent=n.cpu_count * 100,
                disk_mib=n.disk_mib,
                overallocation_pct=n.overallocation_pct,
                used_memory_mib=int(used.memory) if used else 0,
                used_cpu_percent=int(used.cpu) if used else 0,
                used_disk_mib=int(used.disk) if used else 0,
                free_port_count=free_counts.get(n.id, 0),
                free_ports=frozenset(free_wanted.get(n.id, ())),
                name=n.name,
            )
        )
    return infos


class ClaimLost(Exception):
    """The candidate was good in the snapshot but not any more (another claim won); try the next one.
    Raised inside the claim's transaction, so nothing of the attempt is kept."""


async def claim(
    conn: AsyncConnection, inst: Instance, *, ports: Sequence[int], port_count: int, primary: int | None
) -> None:
    """Place ``inst`` (its node_id and region_id set) in one transaction, with every check re-done here:
    a place in the region (guarded increment, capped by the database), the node's resources (the node row
    locked where the database can), and the allocations (assigned only where still free)."""
    if inst.region_id is not None:
        took = await conn.execute(
            update(regions)
            .where(regions.c.id == inst.region_id, regions.c.live_count < regions.c.server_limit)
            .values(live_count=regions.c.live_count + 1)
        )
        if took.rowcount != 1:
            raise ClaimLost("region at its serverLimit")
    assert inst.node_id is not None
    node = (await conn.execute(select(nodes).where(nodes.c.id == inst.node_id).with_for_update())).first()
    if node is None:
        raise ClaimLost("node gone")
    [info] = await node_infos(conn, node_id=inst.node_id, ports=ports)
    if (
        info.free_memory() < inst.memory_mib
        or info.free_cpu() < inst.cpu_percent
        or info.free_disk() < inst.disk_mib
    ):
        raise ClaimLost("node resources taken")
    if ports:
        wanted = select(allocations.c.id, allocations.c.port).where(
            allocations.c.node_id == inst.node_id,
            allocations.c.port.in_(list(ports)),
            allocations.c.instance_id.is_(None),
        )
    else:
        wanted = (
            select(allocations.c.id, allocations.c.port)
            .where(allocations.c.node_id == inst.node_id, allocations.c.instance_id.is_(None))
            .order_by(allocations.c.port, allocations.c.bind_address)
            .limit(port_count)
        )
    rows: dict[int, str] = {}
    for r in await conn.execute(wanted):
        rows.setdefault(r.port, r.id)
    need = len(ports) if ports else port_count
    if len(rows) < need:
        raise ClaimLost("allocations taken")
    primary_port = primary if primary is not None else (ports[0] if ports else min(rows))
    await insert_instance(conn, inst)
    claimed = await conn.execute(
        update(allocations)
        .where(allocations.c.id.in_(list(rows.values())), allocations.c.instance_id.is_(None))
        .values(
            instance_id=inst.id,
            instance_released=False,
            is_primary=case((allocations.c.port == primary_port, True), else_=False),
            updated_at=inst.created_at,
        )
    )
    if claimed.rowcount != need:
        raise ClaimLost("allocations taken")
