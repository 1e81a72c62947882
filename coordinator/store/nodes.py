"""Nodes, their allocations and join tokens."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, Row, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.domain.records import Allocation, HostMetrics, Node, NodeBeat
from coordinator.store.engine import chunks, execute_many
from coordinator.store.rows import record_from_row
from coordinator.store.tables import allocations, instances, join_tokens, nodes, regions

#: Rows written before host metrics were stored canonically carry the panel's camelCase shape.
_LEGACY_METRICS = {
    "cpuPercent": "cpu_percent",
    "memoryUsedMiB": "memory_used_mib",
    "memoryTotalMiB": "memory_total_mib",
    "diskUsedMiB": "disk_used_mib",
    "diskTotalMiB": "disk_total_mib",
    "rxMbps": "net_rx_mbps",
    "txMbps": "net_tx_mbps",
}
_METRIC_ORDER = tuple(f.name for f in dataclasses.fields(HostMetrics))
_METRIC_FIELDS = frozenset(_METRIC_ORDER)


def host_metrics_from_json(stored: Mapping[str, Any] | None) -> HostMetrics | None:
    """The stored metrics (None: no heartbeat ever carried any). Overwritten by the next batch write."""
    if not stored:
        return None
    values = {_LEGACY_METRICS.get(k, k): v for k, v in stored.items() if k != "load"}
    if isinstance(stored.get("load"), list) and len(stored["load"]) == 3:
        values["load1"], values["load5"], values["load15"] = stored["load"]
    return HostMetrics(**{k: v for k, v in values.items() if k in _METRIC_FIELDS})


def node_from_row(row: Row[Any]) -> Node:
    return record_from_row(
        Node,
        row,
        tags=list(row.tags or []),
        maintenance=bool(row.maintenance),
        enrolled=bool(row.enrolled),
        host_metrics=host_metrics_from_json(row.host_metrics),
        processor=row.processor or "",
        engine_error=row.engine_error or "",
    )


def allocation_from_row(row: Row[Any]) -> Allocation:
    return record_from_row(Allocation, row, primary=bool(row.is_primary))


async def insert_node(conn: AsyncConnection, node: Node) -> None:
    await conn.execute(
        insert(nodes).values(
            id=node.id,
            name=node.name,
            address=node.address,
            port=node.port,
            region_id=node.region_id,
            tags=node.tags,
            memory_mib=node.memory_mib,
            disk_mib=node.disk_mib,
            cpu_count=node.cpu_count,
            processor=node.processor or None,
            overallocation_pct=node.overallocation_pct,
            maintenance=node.maintenance,
            enrolled=node.enrolled,
            created_at=node.created_at,
            updated_at=node.created_at,
            organization_id=node.organization_id,
        )
    )


async def insert_allocations(
    conn: AsyncConnection, node_id: str, rows: Sequence[tuple[str, str, int]], now: float | None = None
) -> None:
    """rows: (allocation id, bind address, port). The unique constraint refuses duplicates. The node's free
    counter moves first (lock order: nodes, then allocations)."""
    if rows:
        await conn.execute(
            update(nodes)
            .where(nodes.c.id == node_id)
            .values(free_allocations=nodes.c.free_allocations + len(rows))
        )
        await conn.execute(
            insert(allocations),
            [
                {
                    "id": a,
                    "node_id": node_id,
                    "bind_address": b,
                    "port": p,
                    "created_at": now,
                    "updated_at": now,
                }
                for a, b, p in rows
            ],
        )


async def existing_ports(
    conn: AsyncConnection, node_id: str, bind_address: str, ports: Iterable[int]
) -> list[int]:
    wanted = list(ports)
    if not wanted:
        return []
    found = await conn.execute(
        select(allocations.c.port).where(
            allocations.c.node_id == node_id,
            allocations.c.bind_address == bind_address,
            allocations.c.port.in_(wanted),
        )
    )
    return sorted(r.port for r in found)


async def delete_node(conn: AsyncConnection, node_id: str) -> None:
    """Allocations and join tokens go with the row (cascade); instances keep theirs, without the node.
    Rows are locked in the order every writer keeps (store/claims.py): the node's instances (by id), the
    node, its allocations."""
    await conn.execute(
        select(instances.c.id)
        .where(instances.c.node_id == node_id)
        .order_by(instances.c.id)
        .with_for_update()
    )
    await conn.execute(select(nodes.c.id).where(nodes.c.id == node_id).with_for_update())
    await conn.execute(delete(allocations).where(allocations.c.node_id == node_id))
    await conn.execute(delete(nodes).where(nodes.c.id == node_id))


async def region_exists(conn: AsyncConnection, region_id: str) -> bool:
    return (await conn.execute(select(regions.c.id).where(regions.c.id == region_id))).first() is not None


async def get_node(conn: AsyncConnection, node_id: str) -> Node | None:
    row = (await conn.execute(select(nodes).where(nodes.c.id == node_id))).first()
    return node_from_row(row) if row else None


async def list_nodes(conn: AsyncConnection, *, organization_id: int | None = None) -> list[Node]:
    """Every node, or those an organization may see (the shared fleet and its own dedicated nodes)."""
    query = select(nodes)
    if organization_id is not None:
        query = query.where(
            or_(nodes.c.organization_id.is_(None), nodes.c.organization_id == organization_id)
        )
    rows = await conn.execute(query.order_by(nodes.c.created_at, nodes.c.id))
    return [node_from_row(r) for r in rows]


async def ping(conn: AsyncConnection) -> None:
    await conn.execute(select(1))


async def nodes_by_ids(conn: AsyncConnection, node_ids: Iterable[str]) -> dict[str, Node]:
    wanted = sorted(set(node_ids))
    if not wanted:
        return {}
    rows = await conn.execute(select(nodes).where(nodes.c.id.in_(wanted)))
    return {r.id: node_from_row(r) for r in rows}


async def allocation_counts(conn: AsyncConnection) -> dict[str, tuple[int, int]]:
    """node id -> (allocations, assigned allocations)."""
    rows = await conn.execute(
        select(
            allocations.c.node_id,
            func.count(),
            func.sum(case((allocations.c.instance_id.is_not(None), 1), else_=0)),
        ).group_by(allocations.c.node_id)
    )
    return {r[0]: (int(r[1]), int(r[2] or 0)) for r in rows}


async def node_allocations(conn: AsyncConnection, node_id: str) -> list[Allocation]:
    rows = await conn.execute(
        select(allocations)
        .where(allocations.c.node_id == node_id)
        .order_by(allocations.c.bind_address, allocations.c.port)
    )
    return [allocation_from_row(r) for r in rows]


async def allocations_of(conn: AsyncConnection, node_ids: list[str]) -> dict[str, list[Allocation]]:
    found: dict[str, list[Allocation]] = {}
    if not node_ids:
        return found
    rows = await conn.execute(
        select(allocations)
        .where(allocations.c.node_id.in_(node_ids))
        .order_by(allocations.c.node_id, allocations.c.bind_address, allocations.c.port)
    )
    for r in rows:
        found.setdefault(r.node_id, []).append(allocation_from_row(r))
    return found


async def mark_enrolled(
    conn: AsyncConnection, node_id: str, *, cert_serial: str, agent_version: str, now: float
) -> None:
    await conn.execute(
        update(nodes)
        .where(nodes.c.id == node_id)
        .values(enrolled=True, cert_serial=cert_serial, agent_version=agent_version, updated_at=now)
    )


async def set_cert_serial(conn: AsyncConnection, node_id: str, serial: str, now: float) -> bool:
    result = await conn.execute(
        update(nodes).where(nodes.c.id == node_id).values(cert_serial=serial, updated_at=now)
    )
    return result.rowcount == 1


async def cert_serial(conn: AsyncConnection, node_id: str) -> str | None:
    return (await conn.execute(select(nodes.c.cert_serial).where(nodes.c.id == node_id))).scalar_one_or_none()


def _metrics_json(host: HostMetrics) -> dict[str, Any]:
    """The flat fields as they are: dataclasses.asdict copies recursively, a cost the batch writer paid
    for every dirty node every period."""
    return {name: getattr(host, name) for name in _METRIC_ORDER}


async def write_heartbeats(conn: AsyncConnection, batch: Mapping[str, NodeBeat]) -> None:
    """Every dirty node's lastChecked and engine error, and its host metrics where new ones came (most
    heartbeats carry none: they ride the full ones; the stored ones stand), in the caller's single
    transaction (the batch writer's)."""
    statement = (
        update(nodes)
        .where(nodes.c.id == bindparam("b_id"))
        .values(
            last_checked=bindparam("b_checked"),
            engine_error=bindparam("b_error"),
            host_metrics=func.coalesce(bindparam("b_metrics", type_=JSON), nodes.c.host_metrics),
        )
    )
    # In node order: two batch writers (coordinators) touching the same nodes never wait in a circle.
    for chunk in chunks(sorted(batch.items())):
        rows = [
            {
                "b_id": node_id,
                "b_checked": beat.last_checked,
                "b_error": beat.engine_error[:2000] or None,
                "b_metrics": None if beat.host is None else json.dumps(_metrics_json(beat.host)),
            }
            for node_id, beat in chunk
        ]
        await execute_many(conn, statement, rows)


# ---------------------------------------------------------------- join tokens


async def replace_join_token(
    conn: AsyncConnection, *, node_id: str, token_id: str, digest: str, now: float, expires_at: float
) -> None:
    """Issue a token for the node, voiding every earlier one: only the newest token can enroll."""
    await conn.execute(delete(join_tokens).where(join_tokens.c.node_id == node_id))
    await conn.execute(
        insert(join_tokens).values(
            id=token_id, node_id=node_id, digest=digest, created_at=now, expires_at=expires_at
        )
    )


async def get_join_token(conn: AsyncConnection, token_id: str) -> Row[Any] | None:
    """The token row (node_id, digest, expires_at, used_at) or None."""
    return (await conn.execute(select(join_tokens).where(join_tokens.c.id == token_id))).first()


async def use_join_token(conn: AsyncConnection, token_id: str, now: float) -> bool:
    """Mark the token used; False when another enrollment used it first (WHERE used_at IS NULL)."""
    result = await conn.execute(
        update(join_tokens)
        .where(join_tokens.c.id == token_id, join_tokens.c.used_at.is_(None), join_tokens.c.expires_at > now)
        .values(used_at=now)
    )
    return result.rowcount == 1


async def take_agent_cores(conn: AsyncConnection, node_id: str, cores: int, now: float) -> bool:
    """A node created with a processor description and no core count gets the cores its agent reports
    (once: an operator's count is never overwritten)."""
    result = await conn.execute(
        update(nodes)
        .where(nodes.c.id == node_id, nodes.c.cpu_count == 0)
        .values(cpu_count=cores, updated_at=now)
        .returning(nodes.c.id)
    )
    return result.first() is not None


async def update_node(conn: AsyncConnection, node_id: str, values: dict[str, Any]) -> bool:
    result = await conn.execute(update(nodes).where(nodes.c.id == node_id).values(**values))
    return result.rowcount == 1


async def get_allocation(conn: AsyncConnection, node_id: str, allocation_id: str) -> Allocation | None:
    row = (
        await conn.execute(
            select(allocations).where(allocations.c.id == allocation_id, allocations.c.node_id == node_id)
        )
    ).first()
    return allocation_from_row(row) if row else None


async def delete_free_allocation(conn: AsyncConnection, allocation_id: str) -> bool:
    """Only while no instance holds it (guarded DELETE). The node's row is locked first (lock order: nodes,
    then allocations, as a claim takes them) and its free counter moves by what was deleted."""
    node_id = (
        await conn.execute(select(allocations.c.node_id).where(allocations.c.id == allocation_id))
    ).scalar_one_or_none()
    if node_id is None:
        return False
    await conn.execute(select(nodes.c.id).where(nodes.c.id == node_id).with_for_update())
    result = await conn.execute(
        delete(allocations)
        .where(allocations.c.id == allocation_id, allocations.c.instance_id.is_(None))
        .returning(allocations.c.node_id)
    )
    if result.first() is None:
        return False
    await conn.execute(
        update(nodes).where(nodes.c.id == node_id).values(free_allocations=nodes.c.free_allocations - 1)
    )
    return True


async def update_allocation(conn: AsyncConnection, allocation_id: str, values: dict[str, Any]) -> None:
    await conn.execute(update(allocations).where(allocations.c.id == allocation_id).values(**values))
