"""The cluster's shared secrets, as sealed rows."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.tables import cluster_secrets


async def read_sealed(conn: AsyncConnection) -> dict[str, str]:
    rows = await conn.execute(select(cluster_secrets.c.name, cluster_secrets.c.value))
    return {r.name: r.value for r in rows}


async def insert_sealed(conn: AsyncConnection, sealed: dict[str, str], now: float) -> None:
    await conn.execute(
        insert(cluster_secrets), [{"name": n, "value": v, "created_at": now} for n, v in sealed.items()]
    )
