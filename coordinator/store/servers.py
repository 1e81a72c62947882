"""The servers dialect's rows (unique names, per-server identity) and a client's tags."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.domain.records import InstanceState, ServerIdentity
from coordinator.store.claims import Statement
from coordinator.store.rows import record_values
from coordinator.store.tables import client_tags, instance_tags, instances, nodes, regions, servers

# ---------------------------------------------------------------- servers


def insert_server(instance_id: str, identity: ServerIdentity) -> Statement:
    """The server row, written in the claim's transaction (its identity is sealed already)."""
    return (
        "INSERT INTO servers (instance_id, name, secret, ca_key, ca_cert, tls_key, tls_cert)"
        " VALUES (:instance_id, :name, :secret, :ca_key, :ca_cert, :tls_key, :tls_cert)",
        record_values(identity, instance_id=instance_id),
    )


def free_released_name(name: str) -> Statement:
    """A stopped (released) server gives its name up to a new one: its row goes, its instance (usage
    history) stays. Written in the new server's claim, before its row."""
    return (
        "DELETE FROM servers WHERE name = :name"
        " AND instance_id IN (SELECT id FROM instances WHERE released = :yes)",
        dict(name=name, yes=True),
    )


async def name_in_use(conn: AsyncConnection, name: str) -> bool:
    """Whether a server that is not released holds the name."""
    found = await conn.execute(
        select(servers.c.instance_id)
        .join(instances, instances.c.id == servers.c.instance_id)
        .where(servers.c.name == name, instances.c.released.is_(False))
    )
    return found.first() is not None


async def instance_id_by_name(conn: AsyncConnection, name: str) -> str | None:
    found = await conn.execute(select(servers.c.instance_id).where(servers.c.name == name))
    return found.scalar_one_or_none()


async def server_instance_ids(conn: AsyncConnection, organization_id: int | None) -> list[str]:
    """Every server's instance id, oldest first (of one organization, or all)."""
    query = (
        select(servers.c.instance_id)
        .join(instances, instances.c.id == servers.c.instance_id)
        .order_by(instances.c.created_at, instances.c.id)
    )
    if organization_id is not None:
        query = query.where(instances.c.organization_id == organization_id)
    return list((await conn.execute(query)).scalars())


async def delete_server(conn: AsyncConnection, instance_id: str) -> None:
    """Forget the server (its name and keys); the released instance row stays for usage history."""
    await conn.execute(delete(servers).where(servers.c.instance_id == instance_id))


# ---------------------------------------------------------------- tags

#: A client's tag, unless it exists (a concurrent create is no error).
INSERT_CLIENT_TAG = (
    "INSERT INTO client_tags (organization_id, tag, created_at) VALUES (:org, :tag, :now)"
    " ON CONFLICT DO NOTHING"
)


def tag_statements(
    organization_id: int, instance_id: str, tags: Collection[str], now: float
) -> list[Statement]:
    """A new instance's tags (creating the client's tags it names), written with its claim."""
    out: list[Statement] = []
    for tag in sorted(tags):
        values = dict(org=organization_id, tag=tag, now=now, instance=instance_id)
        out.append((INSERT_CLIENT_TAG, values))
        out.append(
            (
                "INSERT INTO instance_tags (instance_id, organization_id, tag, added_at)"
                " VALUES (:instance, :org, :tag, :now)",
                values,
            )
        )
    return out


async def ensure_tag(conn: AsyncConnection, organization_id: int, tag: str, now: float) -> bool:
    """Create the client's tag unless it exists; True when created (a concurrent create is no error)."""
    done = await conn.execute(text(INSERT_CLIENT_TAG), dict(org=organization_id, tag=tag, now=now))
    return bool(done.rowcount)


async def tag_rows(
    conn: AsyncConnection,
    organization_id: int,
    *,
    tag: str | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """The client's tags by name with how many servers carry each, and how many tags there are."""
    where = [client_tags.c.organization_id == organization_id]
    if tag is not None:
        where.append(client_tags.c.tag == tag)
    counted = (
        select(instance_tags.c.tag, func.count().label("n"))
        .where(instance_tags.c.organization_id == organization_id)
        .group_by(instance_tags.c.tag)
        .subquery()
    )
    query = (
        select(client_tags.c.tag, client_tags.c.created_at, func.coalesce(counted.c.n, 0).label("servers"))
        .outerjoin(counted, counted.c.tag == client_tags.c.tag)
        .where(*where)
        .order_by(client_tags.c.tag)
        .offset(offset)
    )
    if limit is not None:
        query = query.limit(limit)
    rows = [dict(r._mapping) for r in await conn.execute(query)]
    total = (await conn.execute(select(func.count()).select_from(client_tags).where(*where))).scalar_one()
    return rows, int(total)


async def tagged_instance_ids(conn: AsyncConnection, organization_id: int, tag: str) -> list[str]:
    query = (
        select(instance_tags.c.instance_id)
        .join(instances, instances.c.id == instance_tags.c.instance_id)
        .where(instance_tags.c.organization_id == organization_id, instance_tags.c.tag == tag)
        .order_by(instances.c.created_at, instances.c.id)
    )
    return list((await conn.execute(query)).scalars())


async def rename_tag(conn: AsyncConnection, organization_id: int, old: str, new: str) -> bool:
    """One statement: every server's use of the tag follows by ON UPDATE CASCADE."""
    done = await conn.execute(
        update(client_tags)
        .where(client_tags.c.organization_id == organization_id, client_tags.c.tag == old)
        .values(tag=new)
    )
    return bool(done.rowcount)


async def delete_tag(conn: AsyncConnection, organization_id: int, tag: str) -> bool:
    """One statement: the tag leaves every server by ON DELETE CASCADE."""
    done = await conn.execute(
        delete(client_tags).where(client_tags.c.organization_id == organization_id, client_tags.c.tag == tag)
    )
    return bool(done.rowcount)


async def add_instance_tag(
    conn: AsyncConnection, organization_id: int, instance_id: str, tag: str, now: float, most: int
) -> str:
    """ "added", "present" (it carries the tag already) or "full" (it carries ``most`` tags). The server's
    row is locked first (SELECT … FOR UPDATE where the database has it; SQLite's write transaction is one
    writer already), so concurrent adds cannot both pass the count."""
    await conn.execute(select(instances.c.id).where(instances.c.id == instance_id).with_for_update())
    carried = set(
        (
            await conn.execute(select(instance_tags.c.tag).where(instance_tags.c.instance_id == instance_id))
        ).scalars()
    )
    if tag in carried:
        return "present"
    if len(carried) >= most:
        return "full"
    await ensure_tag(conn, organization_id, tag, now)
    await conn.execute(
        insert(instance_tags).values(
            instance_id=instance_id, organization_id=organization_id, tag=tag, added_at=now
        )
    )
    return "added"


async def remove_instance_tag(conn: AsyncConnection, instance_id: str, tag: str) -> bool:
    done = await conn.execute(
        delete(instance_tags).where(instance_tags.c.instance_id == instance_id, instance_tags.c.tag == tag)
    )
    return bool(done.rowcount)


# ---------------------------------------------------------------- a client's servers


async def page_instance_ids(
    conn: AsyncConnection,
    organization_id: int,
    *,
    states: Collection[InstanceState] | None,
    tags: Sequence[str],
    offset: int,
    limit: int,
) -> tuple[list[str], int]:
    """One page of the client's instances (oldest first, then by id: stable across pages), the total that
    match, filtered by state and by carrying every one of ``tags``."""
    where: list[Any] = [instances.c.organization_id == organization_id]
    if states is not None:
        where.append(instances.c.state.in_([s.value for s in states]))
    if tags:
        carrying = (
            select(instance_tags.c.instance_id)
            .where(instance_tags.c.organization_id == organization_id, instance_tags.c.tag.in_(list(tags)))
            .group_by(instance_tags.c.instance_id)
            .having(func.count() == len(set(tags)))
        )
        where.append(instances.c.id.in_(carrying))
    return await _page(conn, where, instances.c.created_at, offset, limit)


async def page_billable_ids(
    conn: AsyncConnection, organization_id: int, start: float, end: float, *, offset: int, limit: int
) -> tuple[list[str], int]:
    """The client's instances that were delivered and ran at some time within [start, end): delivered
    before its end, and not released before its start. Oldest delivery first."""
    where = [
        instances.c.organization_id == organization_id,
        instances.c.delivered_at.is_not(None),
        instances.c.delivered_at < end,
        (instances.c.released_at.is_(None)) | (instances.c.released_at > start),
    ]
    return await _page(conn, where, instances.c.delivered_at, offset, limit)


async def places(
    conn: AsyncConnection, region_ids: Collection[str], node_ids: Collection[str]
) -> tuple[dict[str, tuple[str, str | None]], dict[str, tuple[str, str]]]:
    """({region id: (identifier, country)}, {node id: (address, name)}) for rendering where instances run."""
    found_regions: dict[str, tuple[str, str | None]] = {}
    if region_ids:
        rows = await conn.execute(
            select(regions.c.id, regions.c.identifier, regions.c.country_id).where(
                regions.c.id.in_(list(region_ids))
            )
        )
        found_regions = {r.id: (r.identifier, r.country_id) for r in rows}
    found_nodes: dict[str, tuple[str, str]] = {}
    if node_ids:
        rows = await conn.execute(
            select(nodes.c.id, nodes.c.address, nodes.c.name).where(nodes.c.id.in_(list(node_ids)))
        )
        found_nodes = {r.id: (r.address, r.name) for r in rows}
    return found_regions, found_nodes


async def _page(
    conn: AsyncConnection, where: Sequence[Any], order: Any, offset: int, limit: int
) -> tuple[list[str], int]:
    """One page of instance ids (by ``order``, then id: stable across pages) and how many match."""
    ids = (
        await conn.execute(
            select(instances.c.id).where(*where).order_by(order, instances.c.id).offset(offset).limit(limit)
        )
    ).scalars()
    total = (await conn.execute(select(func.count()).select_from(instances).where(*where))).scalar_one()
    return list(ids), int(total)
