"""The events table: written in the transaction of the change it tells, read in id order by the event
stream with each caller's visibility, pruned past the retention."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.domain.records import FleetEvent, Instance
from coordinator.store.rows import record_from_row
from coordinator.store.tables import events, instances, nodes, webhooks

#: Kinds about a node: one of the shared fleet (organization NULL) is everyone's to see.
NODE_KINDS = ("node.status",)


#: An instance placed (raw SQL: the claim writers run it beside their own statements, in their transaction).
INSERT_PLACED = (
    "INSERT INTO events (at, kind, organization_id, node_id, instance_id, data)"
    " VALUES (:placed_at, 'instance.placed', :placed_org, :placed_node, :placed_id, :placed_data)"
)


def placed_params(inst: Instance) -> dict[str, Any]:
    data = {"regionId": inst.region_id, "memoryMib": inst.memory_mib, "cpuPercent": inst.cpu_percent}
    return {
        "placed_at": inst.created_at,
        "placed_org": inst.organization_id,
        "placed_node": inst.node_id,
        "placed_id": inst.id,
        "placed_data": json.dumps(data),
    }


async def record(
    conn: AsyncConnection,
    kind: str,
    *,
    at: float,
    data: dict[str, Any],
    organization_id: int | None = None,
    node_id: str | None = None,
    instance_id: str | None = None,
) -> None:
    await conn.execute(
        insert(events).values(
            at=at,
            kind=kind,
            organization_id=organization_id,
            node_id=node_id,
            instance_id=instance_id,
            data=data,
        )
    )


async def record_for_instance(
    conn: AsyncConnection, kind: str, instance_id: str, *, at: float, data: dict[str, Any]
) -> None:
    """An event about an instance, seen by its organization, named with the node it is on."""
    row = (
        await conn.execute(
            select(instances.c.organization_id, instances.c.node_id).where(instances.c.id == instance_id)
        )
    ).first()
    if row is not None:
        await record(
            conn,
            kind,
            at=at,
            data=data,
            organization_id=row.organization_id,
            node_id=row.node_id,
            instance_id=instance_id,
        )


async def record_node_status(conn: AsyncConnection, node_id: str, old: str, new: str, at: float) -> None:
    """A node's status change, seen by its organization (a dedicated node) or by all (the shared fleet)."""
    owner = (
        await conn.execute(select(nodes.c.organization_id).where(nodes.c.id == node_id))
    ).scalar_one_or_none()
    await record(
        conn, "node.status", at=at, data={"old": old, "new": new}, organization_id=owner, node_id=node_id
    )


async def after(
    conn: AsyncConnection,
    after_id: int,
    *,
    organization_id: int | None,
    admin: bool,
    limit: int = 500,
    up_to: int | None = None,
    newest: bool = False,
) -> list[FleetEvent]:
    """Events past ``after_id`` (and not past ``up_to``) in id order that the caller may see: an admin
    all, anyone else its organization's and the shared fleet's node events. ``newest``: the last
    ``limit`` of them rather than the first (still oldest first)."""
    order = events.c.id.desc() if newest else events.c.id
    query = select(events).where(events.c.id > after_id).order_by(order).limit(limit)
    if up_to is not None:
        query = query.where(events.c.id <= up_to)
    if not admin:
        query = query.where(seen_by(organization_id))
    found = [record_from_row(FleetEvent, r, data=dict(r.data or {})) for r in await conn.execute(query)]
    return found[::-1] if newest else found


def seen_by(organization_id: int | None) -> ColumnElement[bool]:
    """The rows a non-admin of the organization may see: its own and the shared fleet's node events."""
    return or_(
        events.c.organization_id == organization_id,
        and_(events.c.organization_id.is_(None), events.c.kind.in_(NODE_KINDS)),
    )


def visible(event: FleetEvent, *, organization_id: int | None, admin: bool) -> bool:
    """The rule of :func:`after` for one event already read (the feed hands one read to many callers)."""
    if admin or event.organization_id == organization_id:
        return True
    return event.organization_id is None and event.kind in NODE_KINDS


async def ids_after(conn: AsyncConnection, after_id: int, limit: int = 1000) -> list[int]:
    """Every event id past ``after_id``, whoever may see it: where a reader may safely go (no gap)."""
    found = await conn.execute(
        select(events.c.id).where(events.c.id > after_id).order_by(events.c.id).limit(limit)
    )
    return [int(i) for i in found.scalars()]


async def with_ids(conn: AsyncConnection, ids: list[int]) -> list[FleetEvent]:
    """Those of ``ids`` that exist now, in id order (the feed looks for ids it passed as gaps)."""
    if not ids:
        return []
    query = select(events).where(events.c.id.in_(ids)).order_by(events.c.id)
    return [record_from_row(FleetEvent, r, data=dict(r.data or {})) for r in await conn.execute(query)]


async def newest_id(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.coalesce(func.max(events.c.id), 0)))).scalar_one())


async def prune(conn: AsyncConnection, before: float) -> int:
    """Events written before ``before`` go; a webhook that had not got to some of them counts them as
    dropped and its cursor moves past them (they cannot be delivered any more, and nothing is skipped
    silently)."""
    last = (await conn.execute(select(func.max(events.c.id)).where(events.c.at < before))).scalar()
    if last is None:
        return 0
    # Not past an event that stays (ids and times are nearly, not strictly, in step).
    kept = (await conn.execute(select(func.min(events.c.id)).where(events.c.at >= before))).scalar()
    if kept is not None:
        last = min(last, kept - 1)
    for hook in (await conn.execute(select(webhooks).where(webhooks.c.cursor < last))).all():
        lost = select(func.count()).where(
            events.c.id > hook.cursor, events.c.id <= last, events.c.at < before
        )
        if not hook.fleet_wide:
            lost = lost.where(seen_by(hook.organization_id))
        if hook.kinds is not None:
            lost = lost.where(events.c.kind.in_(list(hook.kinds)))
        count = int((await conn.execute(lost)).scalar_one())
        changes: dict[str, Any] = {"cursor": last}
        if count:
            changes.update(
                dropped=webhooks.c.dropped + count,
                last_error=f"{count} events pruned before they were delivered (events.retention_s)",
            )
        await conn.execute(update(webhooks).where(webhooks.c.id == hook.id).values(**changes))
    result = await conn.execute(delete(events).where(events.c.at < before))
    return result.rowcount or 0
