"""The scheduler's view against the database (real SQLite store, no network): a view that lags the
database may cost a retry, never a wrong refusal nor a double claim."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from sqlalchemy import update

from bench.seed import core_over
from coordinator.domain.agents import Heartbeat
from coordinator.domain.lifecycle import Event
from coordinator.domain.records import Principal
from coordinator.service.core import Core
from coordinator.service.deploy import DeployOrder, DeployService
from coordinator.service.errors import BadRequest, Conflict
from coordinator.store import instances as instances_store
from coordinator.store import nodes as nodes_store
from coordinator.store import regions as regions_store
from coordinator.store.claims import ClaimQueue
from coordinator.store.engine import Store
from coordinator.store.tables import nodes
from tests.unit.factories import make_instance, make_node, seeded_store


@dataclass
class World:
    store: Store
    core: Core
    deploys: DeployService
    caller: Principal


@pytest.fixture
async def world(store_url: str, tmp_path: Path) -> AsyncIterator[World]:
    """Region "eu" (serverLimit 2) with two Ready nodes of 4 GiB and five allocations each, on SQLite and
    on PostgreSQL."""
    store = await seeded_store(store_url, range(0))
    core = core_over(store, tmp_path)
    async with store.write() as conn:
        await regions_store.insert_region(
            conn, dict(id="r-eu", name="EU", identifier="eu", server_limit=2, created_at=0.0, updated_at=0.0)
        )
        for nid in ("big", "small"):
            await nodes_store.insert_node(conn, make_node(nid, region_id="r-eu"))
            await nodes_store.insert_allocations(
                conn, nid, [(f"{nid}-{p}", "0.0.0.0", p) for p in range(30000, 30005)]
            )
    for nid in ("big", "small"):
        core.fleet.record_heartbeat(nid, Heartbeat())
    try:
        yield World(store, core, DeployService(core), Principal("u", "u", 1, True))
    finally:
        await store.close()


def order(memory: int = 1024) -> DeployOrder:
    return DeployOrder(image="busybox", memory_mib=memory, cpu_percent=10, name="b", region="eu")


async def test_a_release_the_view_did_not_see_does_not_refuse_a_deploy(world: World) -> None:
    first = (await world.deploys.deploy(world.caller, order())).instance
    await world.deploys.deploy(world.caller, order())
    with pytest.raises(Conflict, match="at serverLimit 2"):
        await world.deploys.deploy(world.caller, order())
    # Released behind the view's back (as an agent report would): the view still counts the region full.
    async with world.store.write() as conn:
        assert await instances_store.transition(conn, first.id, Event.RELEASE, now=1.0)
        assert await instances_store.transition(conn, first.id, Event.REMOVED, now=1.0)
    third = await world.deploys.deploy(world.caller, order())
    assert third.region_identifier == "eu"


async def test_a_lost_claim_re_reads_the_node_and_moves_on(world: World) -> None:
    """The view thinks "big" is empty; in the database it is full. The claim there loses, the node is
    re-read, and the deploy lands on the next candidate, at once."""
    async with world.store.write() as conn:
        await conn.execute(update(nodes).where(nodes.c.id == "small").values(used_memory_mib=1024))
    await world.core.snapshot.for_chain("r-eu", world.core.fleet.ready)  # the view is loaded: big first
    async with world.store.write() as conn:
        await conn.execute(update(nodes).where(nodes.c.id == "big").values(used_memory_mib=4096))
    placed = await world.deploys.deploy(world.caller, order())
    assert placed.instance.node_id == "small"
    view = await world.core.snapshot.for_chain("r-eu", world.core.fleet.ready)
    big = next(n for n in view.nodes_by_region["r-eu"] if n.id == "big")
    assert big.used_memory_mib == 4096, "the losing node was re-read"


async def test_a_burst_never_overfills_the_region_or_a_node(world: World) -> None:
    results = await asyncio.gather(
        *(world.deploys.deploy(world.caller, order(memory=512)) for _ in range(12)), return_exceptions=True
    )
    placed = [r for r in results if not isinstance(r, BaseException)]
    assert len(placed) == 2
    assert all(uuid.UUID(p.instance.id).version == 7 for p in placed), "time-ordered ids"
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))
    async with world.store.read() as conn:
        infos = {n.id: n for n in await regions_store.node_infos(conn, region_ids=["r-eu"])}
        region = await regions_store.get_region(conn, "eu")
    assert region is not None and region.live_count == 2
    assert sum(n.used_memory_mib for n in infos.values()) == 1024
    assert sum(n.free_port_count for n in infos.values()) == 8


async def test_a_failed_batch_writes_nothing(world: World) -> None:
    def half_then_fail(sql: object) -> None:
        assert callable(sql)
        sql("UPDATE regions SET live_count = 1 WHERE id = 'r-eu'")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        await world.store.batch(half_then_fail)
    async with world.store.read() as conn:
        region = await regions_store.get_region(conn, "r-eu")
    assert region is not None and region.live_count == 0


async def test_a_stream_of_claims_lets_other_writers_in(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim writer keeps the write lock while claims keep coming, but only for MAX_HOLD_S: another
    writer waiting meanwhile gets its turn before the stream ends."""
    monkeypatch.setattr("coordinator.store.claims.MAX_HOLD_S", 0.0)
    monkeypatch.setattr("coordinator.store.claims.MAX_BATCH", 1)
    queue = ClaimQueue(world.store)
    finished: list[str] = []

    async def claim(n: int) -> None:
        inst = make_instance(f"i{n}", node_id="big", memory_mib=1, cpu_percent=1)
        await queue.claim(inst, ports=(), port_count=1, primary=None)
        finished.append(f"claim{n}")

    async def other_writer() -> None:
        await asyncio.sleep(0)
        async with world.store.write() as conn:
            await conn.execute(update(nodes).where(nodes.c.id == "small").values(name="renamed"))
        finished.append("write")

    await asyncio.gather(*(claim(n) for n in range(5)), other_writer())
    assert finished.index("write") < len(finished) - 1, finished


async def test_an_order_naming_no_place_goes_to_any_region_then_to_nodes_in_none(world: World) -> None:
    """The servers dialect with no region asked for or configured: the region with room first, then the
    Ready nodes that are in no region; a refusal names both."""
    anywhere = replace(order(), region=None, anywhere=True)
    first = await world.deploys.deploy(world.caller, anywhere)
    second = await world.deploys.deploy(world.caller, anywhere)
    assert {first.region_identifier, second.region_identifier} == {"eu"}  # eu holds 2 (its serverLimit)
    async with world.store.write() as conn:
        await nodes_store.insert_node(conn, make_node("loose"))
        await nodes_store.insert_allocations(conn, "loose", [("loose-1", "0.0.0.0", 30100)])
    with pytest.raises(Conflict, match="eu: at serverLimit 2; nodes in no region: none Ready"):
        await world.deploys.deploy(world.caller, anywhere)  # "loose" is not Ready yet
    world.core.fleet.record_heartbeat("loose", Heartbeat())
    third = await world.deploys.deploy(world.caller, anywhere)
    assert (third.instance.node_id, third.region_identifier) == ("loose", None)
    with pytest.raises(Conflict, match="no placement anywhere"):
        await world.deploys.deploy(world.caller, anywhere)  # its one allocation is taken
    with pytest.raises(BadRequest, match="nodeId"):
        await world.deploys.deploy(world.caller, replace(order(), region=None))  # not asked to roam
