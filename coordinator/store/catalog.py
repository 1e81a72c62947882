"""Catalog entries added through the API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.tables import catalog_images


async def list_added(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = await conn.execute(select(catalog_images.c.definition).order_by(catalog_images.c.name))
    return [dict(r.definition) for r in rows]


async def add(
    conn: AsyncConnection, name: str, definition: dict[str, Any], by: str | None, now: float
) -> None:
    await conn.execute(
        insert(catalog_images).values(name=name, definition=definition, created_by=by, created_at=now)
    )


async def remove(conn: AsyncConnection, name: str) -> bool:
    return (await conn.execute(delete(catalog_images).where(catalog_images.c.name == name))).rowcount == 1
