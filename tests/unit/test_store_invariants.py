"""Invariants held by the database itself (real SQLite file, migrated by Alembic), also under concurrency."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from coordinator.model import Instance, InstanceState
from coordinator.store import instances as instances_store
from coordinator.store import nodes as nodes_store
from coordinator.store.engine import Store
from coordinator.store.tables import allocations, instances, regions
from tests.unit.factories import make_instance, seeded_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await seeded_store(tmp_path / "m.db")
    try:
        yield s
    finally:
        await s.close()


async def add_instance(store: Store, iid: str | None = None) -> Instance:
    inst = make_instance(iid or str(uuid.uuid4()), node_id="n1")
    async with store.write() as conn:
        await instances_store.insert_instance(conn, inst)
    return inst


async def test_a_released_instance_cannot_hold_an_allocation(store: Store) -> None:
    inst = await add_instance(store)
    async with store.write() as conn:
        assert await instances_store.claim_allocations(conn, inst.id, ["a30000"], "a30000")
    with pytest.raises(IntegrityError):
        async with store.write() as conn:
            await conn.execute(
                update(instances).where(instances.c.id == inst.id).values(state="released", released=True)
            )
    # Freed first, then released: allowed.
    async with store.write() as conn:
        await instances_store.free_instance_allocations(conn, inst.id)
        assert await instances_store.transition(
            conn,
            inst.id,
            InstanceState.RELEASED,
            allowed_from={InstanceState.PENDING},
            now=1.0,
            released=True,
        )


async def test_the_released_flag_follows_the_state(store: Store) -> None:
    inst = await add_instance(store)
    with pytest.raises(IntegrityError):
        async with store.write() as conn:
            await conn.execute(update(instances).where(instances.c.id == inst.id).values(state="released"))


async def test_an_allocation_is_unique_per_node_address_port(store: Store) -> None:
    with pytest.raises(IntegrityError):
        async with store.write() as conn:
            await nodes_store.insert_allocations(conn, "n1", [("dup", "0.0.0.0", 30000)])


async def test_a_region_never_counts_more_than_its_limit(store: Store) -> None:
    async with store.write() as conn:
        await conn.execute(
            insert(regions).values(
                id="r", name="r", identifier="r", server_limit=1, live_count=1, created_at=0.0, updated_at=0.0
            )
        )
    with pytest.raises(IntegrityError):
        async with store.write() as conn:
            await conn.execute(update(regions).values(live_count=regions.c.live_count + 1))


async def test_concurrent_claims_of_one_allocation_have_one_winner(store: Store) -> None:
    contenders = [await add_instance(store) for _ in range(20)]

    async def claim(inst: Instance) -> bool:
        async with store.write() as conn:
            return await instances_store.claim_allocations(conn, inst.id, ["a30001", "a30002"], "a30001")

    results = await asyncio.gather(*(claim(i) for i in contenders))
    assert sum(results) == 1
    async with store.read() as conn:
        owners = {
            r.instance_id
            for r in await conn.execute(select(allocations).where(allocations.c.port.in_([30001, 30002])))
        }
    assert owners == {contenders[results.index(True)].id}


async def test_two_stores_on_one_file_claim_safely(store: Store, tmp_path: Path) -> None:
    """Two engines (as two coordinator processes would be) racing on one SQLite file: BEGIN IMMEDIATE and the
    guarded UPDATE still give exactly one winner per allocation."""
    other = Store.open(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        contenders = [await add_instance(store) for _ in range(10)]

        async def claim(s: Store, inst: Instance) -> bool:
            async with s.write() as conn:
                return await instances_store.claim_allocations(conn, inst.id, ["a30005"], "a30005")

        results = await asyncio.gather(
            *(claim(store if n % 2 else other, i) for n, i in enumerate(contenders))
        )
        assert sum(results) == 1
    finally:
        await other.close()
