"""Webhooks and how far each one's delivery got."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.domain.records import Webhook
from coordinator.store.rows import record_from_row
from coordinator.store.tables import webhooks


def _record(row: Any) -> Webhook:
    return record_from_row(
        Webhook,
        row,
        fleet_wide=bool(row.fleet_wide),
        kinds=tuple(row.kinds) if row.kinds is not None else None,
    )


async def insert_webhook(conn: AsyncConnection, hook: Webhook, sealed_secret: str) -> None:
    await conn.execute(
        insert(webhooks).values(
            id=hook.id,
            organization_id=hook.organization_id,
            fleet_wide=hook.fleet_wide,
            url=hook.url,
            description=hook.description,
            kinds=list(hook.kinds) if hook.kinds is not None else None,
            secret=sealed_secret,
            created_at=hook.created_at,
            cursor=hook.cursor,
        )
    )


async def get_webhook(conn: AsyncConnection, hook_id: str) -> Webhook | None:
    row = (await conn.execute(select(webhooks).where(webhooks.c.id == hook_id))).first()
    return _record(row) if row is not None else None


async def list_webhooks(conn: AsyncConnection, organization_id: int | None = None) -> list[Webhook]:
    """Every hook (``organization_id`` None) or one organization's, oldest first."""
    query = select(webhooks).order_by(webhooks.c.created_at, webhooks.c.id)
    if organization_id is not None:
        query = query.where(webhooks.c.organization_id == organization_id)
    return [_record(r) for r in await conn.execute(query)]


async def sealed_secret(conn: AsyncConnection, hook_id: str) -> str | None:
    """The hook's secret as stored (the deliverer opens it to sign with)."""
    found = await conn.execute(select(webhooks.c.secret).where(webhooks.c.id == hook_id))
    return found.scalar_one_or_none()


async def delete_webhook(conn: AsyncConnection, hook_id: str) -> bool:
    return bool((await conn.execute(delete(webhooks).where(webhooks.c.id == hook_id))).rowcount)


async def delivered(conn: AsyncConnection, hook_id: str, up_to: int, count: int, now: float | None) -> None:
    """Delivery got to ``up_to`` (``count`` events POSTed, at ``now``; None: only events it does not want
    were passed). Never moves a cursor back: a deliverer that lost leadership mid-POST may report late."""
    values: dict[str, Any] = {"cursor": up_to}
    if count:
        values.update(
            delivered=webhooks.c.delivered + count,
            last_delivered_at=now,
            failures=0,
            next_attempt_at=None,
        )
    await conn.execute(
        update(webhooks).where(webhooks.c.id == hook_id, webhooks.c.cursor < up_to).values(**values)
    )


async def failed(
    conn: AsyncConnection, hook_id: str, error: str, now: float, next_attempt_at: float | None
) -> None:
    """An attempt failed; ``next_attempt_at`` None: the event was given up on (the caller moves the cursor
    past it with :func:`gave_up`)."""
    await conn.execute(
        update(webhooks)
        .where(webhooks.c.id == hook_id)
        .values(
            failures=webhooks.c.failures + 1,
            last_error=error[:2000],
            last_error_at=now,
            next_attempt_at=next_attempt_at,
        )
    )


async def gave_up(conn: AsyncConnection, hook_id: str, event_id: int) -> None:
    await conn.execute(
        update(webhooks)
        .where(webhooks.c.id == hook_id, webhooks.c.cursor < event_id)
        .values(cursor=event_id, dropped=webhooks.c.dropped + 1, failures=0, next_attempt_at=None)
    )
