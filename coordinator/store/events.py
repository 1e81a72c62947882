"""The events table: written in the transaction of the change it tells, read in id order by the event
stream with each caller's visibility, pruned past the retention."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.domain.records import FleetEvent
from coordinator.store.rows import record_from_row
from coordinator.store.tables import events, nodes

#: Kinds about a node: one of the shared fleet (organization NULL) is everyone's to see.
NODE_KINDS = ("node.status",)


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
) -> list[FleetEvent]:
    """Events past ``after_id`` (and not past ``up_to``) in id order that the caller may see: an admin
    all, anyone else its organization's and the shared fleet's node events."""
    query = select(events).where(events.c.id > after_id).order_by(events.c.id).limit(limit)
    if up_to is not None:
        query = query.where(events.c.id <= up_to)
    if not admin:
        query = query.where(
            or_(
                events.c.organization_id == organization_id,
                and_(events.c.organization_id.is_(None), events.c.kind.in_(NODE_KINDS)),
            )
        )
    return [record_from_row(FleetEvent, r, data=dict(r.data or {})) for r in await conn.execute(query)]


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


async def newest_id(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.coalesce(func.max(events.c.id), 0)))).scalar_one())


async def prune(conn: AsyncConnection, before: float) -> int:
    result = await conn.execute(delete(events).where(events.c.at < before))
    return result.rowcount or 0
