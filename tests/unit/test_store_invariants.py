"""Invariants held by the database itself (real SQLite file, migrated by Alembic), also under concurrency."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from bench.databases import drop_database, fresh_database
from bench.seed import core_over
from coordinator.domain.lifecycle import Event
from coordinator.domain.records import HostMetrics, Instance, NodeBeat, ServerIdentity
from coordinator.service.bootstrap import ensure_admin
from coordinator.store import events as events_store
from coordinator.store import instances as instances_store
from coordinator.store import nodes as nodes_store
from coordinator.store import users as users_store
from coordinator.store.claims import ClaimLost, ClaimQueue, ClaimRefused, claim_now
from coordinator.store.engine import CHUNK, Store, sqlstate
from coordinator.store.servers import insert_server
from coordinator.store.tables import allocations, instances, nodes, regions
from tests.databases import require_postgres
from tests.unit.factories import make_instance, make_node, seeded_store


async def placed_events(store: Store) -> dict[str, str | None]:
    """instance id -> node id of every instance.placed event (checked against the instance's row)."""
    async with store.read() as conn:
        found = await events_store.after(conn, 0, organization_id=None, admin=True, limit=1000)
        rows = {r.id: r for r in await conn.execute(select(instances))}
    placed = [e for e in found if e.kind == "instance.placed"]
    for e in placed:
        assert e.instance_id is not None and e.organization_id == rows[e.instance_id].organization_id
        assert e.data["memoryMib"] == rows[e.instance_id].memory_mib
    return {e.instance_id: e.node_id for e in placed if e.instance_id is not None}


async def add_instance(store: Store, iid: str | None = None) -> Instance:
    inst = make_instance(iid or str(uuid.uuid4()), node_id="n1")
    async with store.write() as conn:
        await instances_store.insert_instance(conn, inst)
    return inst


async def test_a_released_instance_cannot_hold_an_allocation(store: Store) -> None:
    inst = make_instance(str(uuid.uuid4()), node_id="n1")
    await claim_now(store, inst, ports=(30000,), port_count=1, primary=None)
    with pytest.raises(IntegrityError, match="ck_allocations_assigned_live_only"):
        async with store.write() as conn:
            await conn.execute(
                update(instances).where(instances.c.id == inst.id).values(state="released", released=True)
            )
    # Through the lifecycle (freed first, then released): allowed.
    async with store.write() as conn:
        assert await instances_store.transition(conn, inst.id, Event.RELEASE, now=1.0)
        assert await instances_store.transition(conn, inst.id, Event.REMOVED, now=1.0)


async def test_a_dedicated_node_takes_only_its_organizations_instances(store: Store) -> None:
    """The claim re-checks the node's organization itself: a decision made on a stale view (the node was
    dedicated meanwhile) cannot put a foreign instance on it."""
    async with store.write() as conn:
        other = await users_store.create_organization(conn, "other", 0.0)
        await conn.execute(update(nodes).where(nodes.c.id == "n1").values(organization_id=other))
    foreign = make_instance(str(uuid.uuid4()), node_id="n1")  # organization 1
    with pytest.raises(ClaimLost):
        await claim_now(store, foreign, ports=(30000,), port_count=1, primary=None)
    async with store.read() as conn:
        assert await instances_store.get_instance(conn, foreign.id) is None
        assert (await conn.execute(select(nodes.c.used_memory_mib))).scalar_one() == 0
    own = make_instance(str(uuid.uuid4()), node_id="n1", organization_id=other)
    held = await claim_now(store, own, ports=(30000,), port_count=1, primary=None)
    assert [a.port for a in held] == [30000]


async def test_the_released_flag_follows_the_state(store: Store) -> None:
    inst = await add_instance(store)
    with pytest.raises(IntegrityError, match="ck_instances_released_flag"):
        async with store.write() as conn:
            await conn.execute(update(instances).where(instances.c.id == inst.id).values(state="released"))


async def test_an_allocation_is_unique_per_node_address_port(store: Store) -> None:
    with pytest.raises(IntegrityError, match=r"uq_allocations_node_address_port|allocations\.node_id"):
        async with store.write() as conn:
            await nodes_store.insert_allocations(conn, "n1", [("dup", "0.0.0.0", 30000)])


async def test_a_region_never_counts_more_than_its_limit(store: Store) -> None:
    async with store.write() as conn:
        await conn.execute(
            insert(regions).values(
                id="r", name="r", identifier="r", server_limit=1, live_count=1, created_at=0.0, updated_at=0.0
            )
        )
    with pytest.raises(IntegrityError, match="ck_regions_within_limit"):
        async with store.write() as conn:
            await conn.execute(update(regions).values(live_count=regions.c.live_count + 1))


async def test_concurrent_claims_of_one_allocation_have_one_winner(store: Store) -> None:
    contenders = [make_instance(str(uuid.uuid4()), node_id="n1") for _ in range(20)]

    async def claim(inst: Instance) -> bool:
        try:
            await claim_now(store, inst, ports=(30001, 30002), port_count=2, primary=30001)
        except ClaimLost:
            return False
        return True

    results = await asyncio.gather(*(claim(i) for i in contenders))
    assert sum(results) == 1
    async with store.read() as conn:
        owners = {
            r.instance_id
            for r in await conn.execute(select(allocations).where(allocations.c.port.in_([30001, 30002])))
        }
    assert owners == {contenders[results.index(True)].id}


async def test_two_stores_on_one_database_claim_safely(store: Store, store_url: str) -> None:
    """Two engines (as two coordinator processes would be) racing on one database: the guarded UPDATE
    (after BEGIN IMMEDIATE on SQLite) still gives exactly one winner per allocation."""
    other = Store.open(store_url)
    try:
        contenders = [make_instance(str(uuid.uuid4()), node_id="n1") for _ in range(10)]

        async def claim(s: Store, inst: Instance) -> bool:
            try:
                await claim_now(s, inst, ports=(30005,), port_count=1, primary=None)
            except ClaimLost:
                return False
            return True

        results = await asyncio.gather(
            *(claim(store if n % 2 else other, i) for n, i in enumerate(contenders))
        )
        assert sum(results) == 1
    finally:
        await other.close()


async def test_group_commit_gives_each_allocation_once_and_counts_what_it_places(store: Store) -> None:
    queue = ClaimQueue(store)
    contenders = [
        make_instance(str(uuid.uuid4()), node_id="n1", memory_mib=64, cpu_percent=10) for _ in range(30)
    ]

    async def one(inst: Instance) -> bool:
        try:
            await queue.claim(inst, ports=(), port_count=1, primary=None)
        except ClaimLost:
            return False
        return True

    results = await asyncio.gather(*(one(i) for i in contenders))
    assert sum(results) == 10  # n1 has ten allocations
    async with store.read() as conn:
        held = [
            r.instance_id
            for r in await conn.execute(select(allocations).where(allocations.c.node_id == "n1"))
        ]
        node = (await conn.execute(select(nodes).where(nodes.c.id == "n1"))).one()
    winners = {i.id for i, won in zip(contenders, results, strict=True) if won}
    assert set(held) == winners and len(held) == 10
    assert (node.used_memory_mib, node.used_cpu_percent, node.free_allocations) == (640, 100, 0)
    # Each placement is an event, written by the claim that won; a lost claim leaves none.
    assert await placed_events(store) == {i: "n1" for i in winners}
    # Releasing gives the node its room and its allocation back, in the same transaction.
    some = next(iter(winners))
    async with store.write() as conn:
        await instances_store.transition(conn, some, Event.RELEASE, now=1.0)
        assert await instances_store.transition(conn, some, Event.REMOVED, now=2.0)
    async with store.read() as conn:
        node = (await conn.execute(select(nodes).where(nodes.c.id == "n1"))).one()
    assert (node.used_memory_mib, node.used_cpu_percent, node.free_allocations) == (576, 90, 1)


async def test_the_batch_writer_stores_heartbeats_and_bandwidth_in_one_statement_each(store: Store) -> None:
    inst = await add_instance(store)
    async with store.write() as conn:
        await nodes_store.write_heartbeats(
            conn, {"n1": NodeBeat(123.5, HostMetrics(cpu_percent=2.5, load1=0.1), "engine down")}
        )
        await instances_store.write_bandwidth(
            conn,
            {
                inst.id: {
                    "rx_bytes": 10,
                    "tx_bytes": 20,
                    "net_epoch": "c:1",
                    "net_rx_seen": 1,
                    "net_tx_seen": 2,
                }
            },
        )
    async with store.read() as conn:
        node = await nodes_store.get_node(conn, "n1")
        assert node is not None and node.last_checked == 123.5
        assert node.host_metrics == HostMetrics(cpu_percent=2.5, load1=0.1)
        assert node.engine_error == "engine down"
        assert await instances_store.bandwidth_meters(conn) == [(inst.id, 10, 20, "c:1", 1, 2)]
    # A heartbeat with no host metrics (a partial one) moves lastChecked; the stored metrics stand.
    async with store.write() as conn:
        await nodes_store.write_heartbeats(conn, {"n1": NodeBeat(130.0, None, "")})
    async with store.read() as conn:
        node = await nodes_store.get_node(conn, "n1")
        assert node is not None and (node.last_checked, node.engine_error) == (130.0, "")
        assert node.host_metrics == HostMetrics(cpu_percent=2.5, load1=0.1)


async def test_the_batch_writer_writes_a_fleet_in_slices_of_one_order(store: Store) -> None:
    """More rows than one slice takes: every one of them written."""
    count = CHUNK * 2 + 7
    async with store.write() as conn:
        for n in range(count):
            await nodes_store.insert_node(conn, make_node(f"m{n:04d}"))
    async with store.write() as conn:
        await nodes_store.write_heartbeats(conn, {f"m{n:04d}": NodeBeat(float(n)) for n in range(count)})
    async with store.read() as conn:
        found = (
            await conn.execute(select(nodes.c.id, nodes.c.last_checked).where(nodes.c.id.like("m%")))
        ).all()
    assert sorted(found) == [(f"m{n:04d}", float(n)) for n in range(count)]


async def test_a_queued_claim_takes_what_it_asks_with_its_primary_or_writes_nothing(store: Store) -> None:
    """The claim queue's path (on PostgreSQL one all-or-nothing statement a claim, on SQLite statements in a
    savepoint): named ports, a count of ports, the primary, and a claim that loses leaves no trace."""
    async with store.write() as conn:
        await conn.execute(
            insert(regions).values(
                id="ra", name="ra", identifier="ra", server_limit=2, created_at=0, updated_at=0
            )
        )
        await conn.execute(update(nodes).where(nodes.c.id == "n1").values(region_id="ra"))
        # Port 30005 on a second address too: asking for it twice must still not get both.
        await nodes_store.insert_allocations(conn, "n1", [("a30005-lo", "127.0.0.1", 30005)])
    queue = ClaimQueue(store)

    async def claim(ports: tuple[int, ...], count: int, primary: int | None, **over: object) -> list[int]:
        inst = make_instance(str(uuid.uuid4()), node_id="n1", region_id="ra", **over)
        held = await queue.claim(inst, ports=ports, port_count=count, primary=primary)
        assert held[0].primary and sum(a.primary for a in held) == 1
        return [a.port for a in held]

    async def counters() -> tuple[object, ...]:
        async with store.read() as conn:
            node = (await conn.execute(select(nodes).where(nodes.c.id == "n1"))).one()
            live = (await conn.execute(select(regions.c.live_count).where(regions.c.id == "ra"))).scalar_one()
            rows = (await conn.execute(select(func.count()).select_from(instances))).scalar_one()
        return node.used_memory_mib, node.free_allocations, live, rows

    assert await claim((30004, 30002), 2, None) == [30004, 30002]  # the first named is the primary
    assert await claim((), 3, None) == [30000, 30001, 30003]  # the lowest free port is
    before = await counters()
    assert before == (128, 6, 2, 2)
    losers: list[tuple[tuple[int, ...], int, dict[str, int]]] = [
        ((30002,), 1, {}),  # held already
        ((), 1, {}),  # the region is at its serverLimit
    ]
    for ports, count, over in losers:
        with pytest.raises(ClaimLost):
            await claim(ports, count, None, **over)
        assert await counters() == before
    async with store.write() as conn:
        await conn.execute(update(regions).where(regions.c.id == "ra").values(server_limit=10))
    losers = [
        ((30005, 30005), 2, {}),  # the same port twice (free on two addresses)
        ((), 7, {}),  # more than are free
        ((), 1, {"memory_mib": 10_000}),  # more memory than the node has
    ]
    for ports, count, over in losers:
        with pytest.raises(ClaimLost):
            await claim(ports, count, None, **over)
        assert await counters() == before
    assert await claim((30006, 30007), 2, 30007) == [30007, 30006]  # a named primary first


async def test_claims_that_share_a_batch_see_each_other(store: Store) -> None:
    """Claims queued at one moment go down in one transaction (on PostgreSQL one pipelined round trip):
    each sees what the ones before it took, so four asking for one port get it once, and the region's
    serverLimit caps the batch as it caps claims one by one."""
    async with store.write() as conn:
        await conn.execute(
            insert(regions).values(
                id="rb", name="rb", identifier="rb", server_limit=3, created_at=0, updated_at=0
            )
        )
        await conn.execute(update(nodes).where(nodes.c.id == "n1").values(region_id="rb"))
        free_before = (await conn.execute(select(nodes.c.free_allocations))).scalar_one()
    queue = ClaimQueue(store)

    async def claim(ports: tuple[int, ...]) -> list[int] | None:
        inst = make_instance(str(uuid.uuid4()), node_id="n1", region_id="rb")
        try:
            return [a.port for a in await queue.claim(inst, ports=ports, port_count=1, primary=None)]
        except ClaimLost:
            return None

    # All queued before the queue's writer first runs: one batch.
    outcomes = await asyncio.gather(*(claim((30000,)) for _ in range(4)), *(claim(()) for _ in range(3)))
    won = [o for o in outcomes if o is not None]
    assert outcomes[:4].count([30000]) == 1 and outcomes[:4].count(None) == 3
    assert len(won) == 3 and len({p for o in won for p in o}) == 3
    async with store.read() as conn:
        live = (await conn.execute(select(regions.c.live_count).where(regions.c.id == "rb"))).scalar_one()
        free = (await conn.execute(select(nodes.c.free_allocations))).scalar_one()
        rows = (await conn.execute(select(func.count()).select_from(instances))).scalar_one()
        held = (
            await conn.execute(
                select(func.count()).select_from(allocations).where(allocations.c.instance_id.is_not(None))
            )
        ).scalar_one()
    assert (live, free_before - free, rows, held) == (3, 3, 3, 3)
    assert len(await placed_events(store)) == 3


async def test_a_claim_the_database_refuses_is_a_database_error() -> None:
    """A value the column refuses fails the claim's batch with the error SQLAlchemy would raise, SQLSTATE
    and all, which the StoreBusy and retry rules read; nothing of the batch is written. PostgreSQL only:
    SQLite does not check lengths, and its claims do not go through the pipelined driver call."""
    base = require_postgres()
    url = await fresh_database(base)
    store = await seeded_store(url)
    try:
        await refused_then_fine(store)
    finally:
        await store.close()
        await drop_database(base, url)


async def refused_then_fine(store: Store) -> None:
    queue = ClaimQueue(store)
    too_long = make_instance(str(uuid.uuid4()), node_id="n1", name="x" * 101)
    with pytest.raises(DBAPIError) as raised:
        await queue.claim(too_long, ports=(), port_count=1, primary=None)
    assert sqlstate(raised.value) == "22001"
    async with store.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(instances))).scalar_one() == 0
    # The writer's connection is fine afterwards.
    fine = make_instance(str(uuid.uuid4()), node_id="n1")
    assert len(await queue.claim(fine, ports=(), port_count=1, primary=None)) == 1


async def test_bandwidth_totals_never_go_back(store: Store) -> None:
    """Two coordinators that held one node in turn: the one whose meter started from an older total must
    not write it over the later one the other wrote."""
    inst = await add_instance(store)

    def totals(rx: int, tx: int) -> dict[str, dict[str, object]]:
        return {
            inst.id: {
                "rx_bytes": rx,
                "tx_bytes": tx,
                "net_epoch": "c:1",
                "net_rx_seen": rx,
                "net_tx_seen": tx,
            }
        }

    for rx, tx in ((500, 900), (300, 950), (700, 100)):
        async with store.write() as conn:
            await instances_store.write_bandwidth(conn, totals(rx, tx))
    async with store.read() as conn:
        assert await instances_store.bandwidth_meters(conn, "n1") == [(inst.id, 700, 950, "c:1", 700, 100)]
        assert await instances_store.bandwidth_meters(conn, "elsewhere") == []


async def test_a_refused_extra_row_rolls_back_only_its_own_claim(store: Store) -> None:
    """Claims batched in one transaction: the one whose server name is taken loses everything it wrote (its
    allocation too), the others in the same batch hold."""
    identity = ServerIdentity("same-name", "s", "k", "c", "k", "c")
    queue = ClaimQueue(store)
    contenders = [make_instance(str(uuid.uuid4()), node_id="n1") for _ in range(6)]
    outcomes = await asyncio.gather(
        *(
            queue.claim(i, ports=(), port_count=1, primary=None, extra=[insert_server(i.id, identity)])
            for i in contenders
        ),
        return_exceptions=True,
    )
    won = [i for i, o in zip(contenders, outcomes, strict=True) if isinstance(o, list)]
    assert len(won) == 1
    assert all(isinstance(o, ClaimRefused) for o in outcomes if not isinstance(o, list))
    async with store.read() as conn:
        held = (
            await conn.execute(text("SELECT instance_id FROM allocations WHERE instance_id IS NOT NULL"))
        ).all()
        rows = (await conn.execute(text("SELECT id FROM instances"))).all()
        names = (await conn.execute(text("SELECT instance_id FROM servers"))).all()
    assert [r[0] for r in held] == [r[0] for r in rows] == [r[0] for r in names] == [won[0].id]
    assert await placed_events(store) == {won[0].id: "n1"}  # the refused ones' events went with them


def test_host_metrics_stored_by_an_earlier_version_read_canonically() -> None:
    """Rows written before metrics were stored canonically carry the panel's shape; the next batch write
    replaces them, and until then they read the same."""
    legacy = {"cpuPercent": 12.5, "memoryUsedMiB": 100, "memoryTotalMiB": 200, "load": [0.5, 0.25, 0.1]}
    assert nodes_store.host_metrics_from_json(legacy) == HostMetrics(
        cpu_percent=12.5, memory_used_mib=100, memory_total_mib=200, load1=0.5, load5=0.25, load15=0.1
    )
    assert nodes_store.host_metrics_from_json({}) is None and nodes_store.host_metrics_from_json(None) is None


async def test_concurrent_claims_and_releases_keep_every_counter(store: Store) -> None:
    """Claims and releases racing on one node and one region (as busy coordinators make them): the
    counters placement reads stay equal to the rows — on PostgreSQL a recount under read committed used to
    drift (33 of 40 rounds), and opposite lock orders deadlocked."""
    async with store.write() as conn:
        await conn.execute(
            insert(regions).values(
                id="r", name="r", identifier="r", server_limit=100, created_at=0.0, updated_at=0.0
            )
        )
        await conn.execute(update(nodes).where(nodes.c.id == "n1").values(region_id="r"))
    held: list[Instance] = []

    async def claim_one() -> None:
        inst = make_instance(str(uuid.uuid4()), node_id="n1", region_id="r")
        try:
            await claim_now(store, inst, ports=(), port_count=1, primary=None)
        except ClaimLost:
            return
        held.append(inst)

    async def release(inst: Instance) -> None:
        async with store.write() as conn:
            await instances_store.transition(conn, inst.id, Event.RELEASE, now=1.0)
        async with store.write() as conn:
            await instances_store.transition(conn, inst.id, Event.REMOVED, now=2.0)

    for _ in range(8):
        leaving, held[:] = list(held[: len(held) // 2]), held[len(held) // 2 :]
        await asyncio.gather(*(claim_one() for _ in range(6)), *(release(i) for i in leaving))
    async with store.read() as conn:
        node = (await conn.execute(select(nodes).where(nodes.c.id == "n1"))).one()
        free = (
            await conn.execute(
                select(func.count()).where(allocations.c.node_id == "n1", allocations.c.instance_id.is_(None))
            )
        ).scalar_one()
        live = (
            await conn.execute(
                select(func.count(), func.coalesce(func.sum(instances.c.memory_mib), 0)).where(
                    instances.c.node_id == "n1", instances.c.state.not_in(["released", "error"])
                )
            )
        ).one()
        region = (await conn.execute(select(regions.c.live_count).where(regions.c.id == "r"))).scalar_one()
    assert node.free_allocations == free, (node.free_allocations, free)
    assert (region, node.used_memory_mib) == (live[0], live[1])
    assert live[0] == len(held) > 0


async def test_coordinators_starting_at_once_on_an_empty_database_all_come_up(
    store_url: str, tmp_path: Path
) -> None:
    """Three coordinators started at the same instant on one empty database: every migration succeeds
    (one does the work), and exactly one admin is created."""
    stores = [Store.open(store_url) for _ in range(3)]
    try:
        await asyncio.gather(*(s.migrate() for s in stores))
        cores = []
        for n, s in enumerate(stores):
            (tmp_path / f"c{n}").mkdir()
            cores.append(core_over(s, tmp_path / f"c{n}"))
        keys = await asyncio.gather(*(ensure_admin(c, None) for c in cores))
        assert sum(k is not None for k in keys) == 1
        async with stores[0].read() as conn:
            assert await users_store.count_users(conn) == 1
    finally:
        for s in stores:
            await s.close()


async def test_claim_batches_heartbeat_writes_and_releases_never_wait_in_a_circle(store: Store) -> None:
    """Batched claims over several regions and nodes, the heartbeat writer touching every node, and
    releases, all at once: no deadlock (PostgreSQL would abort one of them) and the counters hold. A batch
    locks its regions, then its nodes, in id order; the heartbeat writer takes nodes in id order; a release
    takes its instance, region, node, allocations."""
    async with store.write() as conn:
        for r in ("ra", "rb"):
            await conn.execute(
                insert(regions).values(
                    id=r, name=r, identifier=r, server_limit=100, created_at=0.0, updated_at=0.0
                )
            )
        await conn.execute(update(nodes).where(nodes.c.id == "n1").values(region_id="ra"))
        for n, region in (("n2", "rb"), ("n3", "ra"), ("n4", "rb")):
            await nodes_store.insert_node(conn, make_node(n, region_id=region))
            await nodes_store.insert_allocations(
                conn, n, [(f"{n}-{p}", "0.0.0.0", p) for p in range(30000, 30010)]
            )
    queue = ClaimQueue(store)
    placed: list[Instance] = []

    async def claim(node: str, region: str) -> None:
        inst = make_instance(str(uuid.uuid4()), node_id=node, region_id=region, memory_mib=16, cpu_percent=1)
        try:
            await queue.claim(inst, ports=(), port_count=1, primary=None)
        except ClaimLost:
            return
        placed.append(inst)

    async def beat() -> None:
        async with store.write() as conn:
            await nodes_store.write_heartbeats(
                conn,
                {
                    n: NodeBeat(float(k), HostMetrics(cpu_percent=1.0))
                    for k, n in enumerate(("n4", "n1", "n3", "n2"))
                },
            )

    async def release(inst: Instance) -> None:
        async with store.write() as conn:
            await instances_store.transition(conn, inst.id, Event.RELEASE, now=1.0)
        async with store.write() as conn:
            await instances_store.transition(conn, inst.id, Event.REMOVED, now=2.0)

    places = [("n1", "ra"), ("n2", "rb"), ("n3", "ra"), ("n4", "rb")]
    for round_ in range(6):
        leaving, placed[:] = list(placed[::2]), placed[1::2]
        await asyncio.gather(
            *(claim(*places[(round_ + k) % 4]) for k in range(16)),
            *(beat() for _ in range(3)),
            *(release(i) for i in leaving),
        )
    async with store.read() as conn:
        for node_id, _ in places:
            node = (await conn.execute(select(nodes).where(nodes.c.id == node_id))).one()
            free = (
                await conn.execute(
                    select(func.count()).where(
                        allocations.c.node_id == node_id, allocations.c.instance_id.is_(None)
                    )
                )
            ).scalar_one()
            assert node.free_allocations == free, node_id
        counted = (await conn.execute(select(func.sum(regions.c.live_count)))).scalar_one()
    assert counted == len(placed) > 0
