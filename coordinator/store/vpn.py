"""Queries the vpn dialect needs: instances by their stable number, pages of an organization's endpoints,
and the instances due for release (expired, or replaced by a redeploy that now runs)."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from coordinator.domain.records import LIVE_STATES, InstanceState
from coordinator.store.tables import instance_numbers, instances, regions

_LIVE = [s.value for s in LIVE_STATES]


async def instance_id_by_number(conn: AsyncConnection, number: int) -> str | None:
    found = await conn.execute(
        select(instance_numbers.c.instance_id).where(instance_numbers.c.number == number)
    )
    return found.scalar_one_or_none()


async def page_numbered(
    conn: AsyncConnection, organization_id: int | None, *, offset: int, limit: int
) -> tuple[list[str], int]:
    """Instance ids by number (creation order) of the organization (all for None), released ones left out,
    and how many there are."""
    where = [instances.c.state != InstanceState.RELEASED.value]
    if organization_id is not None:
        where.append(instances.c.organization_id == organization_id)
    joined = instance_numbers.join(instances, instances.c.id == instance_numbers.c.instance_id)
    ids = await conn.execute(
        select(instance_numbers.c.instance_id)
        .select_from(joined)
        .where(*where)
        .order_by(instance_numbers.c.number)
        .offset(offset)
        .limit(limit)
    )
    total = await conn.execute(select(func.count()).select_from(joined).where(*where))
    return list(ids.scalars()), int(total.scalar_one())


async def rename(conn: AsyncConnection, instance_id: str, name: str, now: float) -> None:
    await conn.execute(
        update(instances).where(instances.c.id == instance_id).values(name=name, updated_at=now)
    )


async def claim_redeploy(conn: AsyncConnection, instance_id: str, now: float) -> bool:
    """Mark the instance Pending Release unless it is already: of two concurrent redeploys one wins."""
    done = await conn.execute(
        update(instances)
        .where(instances.c.id == instance_id, instances.c.pending_release.is_(False))
        .values(pending_release=True, updated_at=now)
    )
    return bool(done.rowcount)


async def abandoned(conn: AsyncConnection, now: float) -> list[str]:
    """Originals waiting for a replacement that ended without ever running (failed, or released first):
    they go back to normal rather than wait forever. Expired ones are released by the sweep instead."""
    replacement = aliased(instances)
    waiting_for_one = (
        select(replacement.c.id)
        .where(replacement.c.replaces_id == instances.c.id)
        .where(replacement.c.state.in_(_LIVE) | replacement.c.delivered_at.is_not(None))
        .exists()
    )
    found = await conn.execute(
        select(instances.c.id).where(
            instances.c.pending_release.is_(True),
            instances.c.state.in_(_LIVE),
            instances.c.state != InstanceState.RELEASING.value,
            (instances.c.expires_at.is_(None)) | (instances.c.expires_at > now),
            ~waiting_for_one,
        )
    )
    return list(found.scalars())


async def set_pending_release(
    conn: AsyncConnection, instance_ids: list[str], pending: bool, now: float
) -> None:
    if instance_ids:
        # Their rows locked in id order first (an IN list updates in plan order).
        await conn.execute(
            select(instances.c.id)
            .where(instances.c.id.in_(instance_ids))
            .order_by(instances.c.id)
            .with_for_update()
        )
        await conn.execute(
            update(instances)
            .where(instances.c.id.in_(instance_ids))
            .values(pending_release=pending, updated_at=now)
        )


async def due_for_release(conn: AsyncConnection, now: float) -> list[str]:
    """Live instances that expired, or that wait for a replacement which now runs."""
    replacement = aliased(instances)
    expired = select(instances.c.id).where(
        instances.c.state.in_(_LIVE),
        instances.c.state != InstanceState.RELEASING.value,
        instances.c.expires_at.is_not(None),
        instances.c.expires_at <= now,
    )
    replaced = (
        select(instances.c.id)
        .join(replacement, replacement.c.replaces_id == instances.c.id)
        .where(
            instances.c.pending_release.is_(True),
            instances.c.state.in_(_LIVE),
            instances.c.state != InstanceState.RELEASING.value,
            replacement.c.state == InstanceState.RUNNING.value,
        )
    )
    found = await conn.execute(expired.union(replaced))
    return sorted(set(found.scalars()))


async def region_countries(conn: AsyncConnection) -> list[str]:
    """Countries (upper-case ISO-3166 alpha-2) that have at least one region, sorted."""
    rows = await conn.execute(
        select(regions.c.country_id).where(regions.c.country_id.is_not(None)).distinct()
    )
    return sorted({str(c).upper() for c in rows.scalars() if c})
