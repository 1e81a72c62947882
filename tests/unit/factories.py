"""Domain records with sensible defaults, for unit tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.domain.records import Instance, InstanceState, Node
from coordinator.store import nodes as nodes_store
from coordinator.store import users as users_store
from coordinator.store.engine import Store


def make_node(node_id: str, **over: Any) -> Node:
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


def make_instance(instance_id: str, **over: Any) -> Instance:
    values: dict[str, Any] = dict(
        id=instance_id,
        name="i",
        organization_id=1,
        owner_id="u",
        image="img",
        image_ref="img",
        memory_mib=64,
        cpu_percent=50,
        disk_mib=0,
        env={},
        node_id=None,
        region_id=None,
        state=InstanceState.PENDING,
        error=None,
        suspended=False,
        container_id=None,
        created_at=0.0,
        updated_at=0.0,
        state_changed_at=0.0,
        delivered_at=None,
        released_at=None,
    )
    values.update(over)
    return Instance(**values)


async def seeded_store(path: Path, ports: range = range(30000, 30010)) -> Store:
    """A migrated SQLite store holding user "u" (organization 1) and node "n1" with allocations
    "a<port>" on 0.0.0.0."""
    store = Store.open(f"sqlite:///{path}")
    await store.migrate()
    async with store.write() as conn:
        await seed_user(conn)
        await nodes_store.insert_node(conn, make_node("n1"))
        await nodes_store.insert_allocations(conn, "n1", [(f"a{p}", "0.0.0.0", p) for p in ports])
    return store


async def seed_user(conn: AsyncConnection, *, admin: bool = False) -> int:
    """User "u" in a new organization (whose id is returned)."""
    org = await users_store.create_organization(conn, "o", 0.0)
    await users_store.create_user(
        conn,
        user_id="u",
        username="u",
        email="u@x",
        password_hash=None,
        admin=admin,
        organization_id=org,
        now=0.0,
    )
    return org
