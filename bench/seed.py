"""Rows a benchmark (or a unit test) puts straight into a store: an organization with its first user, and
enrolled nodes."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.domain.records import Node
from coordinator.store import users as users_store


async def organization_with_user(
    conn: AsyncConnection, user_id: str, *, admin: bool, now: float = 0.0
) -> int:
    """A new organization (its id is returned) and its user ``user_id`` (no password: keys only)."""
    org = await users_store.create_organization(conn, user_id, now)
    await users_store.create_user(
        conn,
        user_id=user_id,
        username=user_id,
        email=f"{user_id}@example.com",
        password_hash=None,
        admin=admin,
        organization_id=org,
        now=now,
    )
    return org


def node_record(node_id: str, **over: Any) -> Node:
    """An enrolled node in no region, 4 GiB and 2 cores unless ``over`` says otherwise."""
    values: dict[str, Any] = dict(
        id=node_id,
        name=node_id,
        address="127.0.0.1",
        port=8080,
        region_id=None,
        tags=[],
        memory_mib=4096,
        disk_mib=10_000,
        cpu_count=2,
        overallocation_pct=0,
        maintenance=False,
        enrolled=True,
        created_at=0.0,
    )
    values.update(over)
    return Node(**values)
