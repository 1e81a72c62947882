"""Placement figures.

1. Decisions per second of the pure function over 5,000 nodes in 10 regions (each request starts in a
   random region and may fall back): every node scored (plain lists), and over the ranked view the
   coordinator keeps (RankedNodes), which walks only as far as its candidates.
2. Placements per second through the deploy use case with the database claim, on SQLite (FULL sync) in a
   temporary directory: 5,000 Ready nodes with 20 allocations each, placements issued concurrently; then
   the invariants are checked in the database (no allocation twice, counters equal to the rows). The
   first deploys read the fleet into the scheduler's view; that cold start is timed apart from the rate.
   The same on PostgreSQL: a fresh database in the test cluster, or ``--database URL`` (an empty one);
   and with three coordinators claiming at once on one fresh database (three processes, each its own
   store, view and claim queue, as three coordinators are), the rate of all three together.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.databases import drop_database, fresh_database, postgres_url, server_cpu_s
from bench.seed import core_over, node_record, organization_with_user
from coordinator.config import CoordinatorConfig
from coordinator.domain.agents import Heartbeat
from coordinator.domain.records import Principal
from coordinator.placement.scheduler import (
    Decision,
    NodeInfo,
    RankedNodes,
    RegionInfo,
    Request,
    Snapshot,
    place,
)
from coordinator.service.deploy import DeployOrder, DeployService
from coordinator.service.errors import ServiceError
from coordinator.store import nodes as nodes_store
from coordinator.store import regions as regions_store
from coordinator.store.engine import Store

REGIONS = 10
NODES = 5_000
PORTS_PER_NODE = 20
DECISIONS = 2_000
PLACEMENTS = 6_000
CONCURRENCY = 32
#: Coordinators claiming at once on one PostgreSQL database.
COORDINATORS = 3
#: One coordinator and then three, this many times over (the figures compare rounds side by side).
ROUNDS = 3


def pure_decisions() -> float:
    rng = random.Random(7)
    regions = {
        f"r{i}": RegionInfo(f"r{i}", f"r{i}", 10_000, rng.randint(0, 5_000), f"r{(i + 1) % REGIONS}")
        for i in range(REGIONS)
    }
    by_region: dict[str, list[NodeInfo]] = {}
    for n in range(NODES):
        rid = f"r{n % REGIONS}"
        memory = rng.choice([8192, 16384, 32768])
        by_region.setdefault(rid, []).append(
            NodeInfo(
                id=f"n{n}",
                region_id=rid,
                ready=rng.random() > 0.05,
                maintenance=rng.random() < 0.02,
                tags=frozenset(rng.sample(["ssd", "eu", "gpu"], rng.randint(0, 2))),
                memory_mib=memory,
                cpu_percent=800,
                disk_mib=100_000,
                used_memory_mib=rng.randint(0, memory),
                free_port_count=5,
            )
        )
    requests = [Request(memory_mib=rng.choice([512, 2048, 8192]), cpu_percent=100) for _ in range(DECISIONS)]
    starts = [f"r{rng.randrange(REGIONS)}" for _ in range(DECISIONS)]
    ranked = {rid: RankedNodes(nodes, rng) for rid, nodes in by_region.items()}
    rate = 0.0
    for label, snapshot in (
        ("every node scored", Snapshot(regions, by_region)),
        ("ranked view", Snapshot(regions, ranked)),
    ):
        begin = time.perf_counter()
        placed = sum(
            isinstance(place(r, s, snapshot, rng=rng), Decision)
            for r, s in zip(requests, starts, strict=True)
        )
        rate = DECISIONS / (time.perf_counter() - begin)
        print(
            f"pure placement, {NODES} nodes / {REGIONS} regions, {label:17}  {rate:9.0f} decisions/s"
            f"   ({placed} placed)"
        )
    return rate


async def seed(store: Store) -> int:
    """REGIONS regions in a ring of fallbacks and NODES nodes with PORTS_PER_NODE allocations each, in a
    migrated, empty store; the organization of the admin user "u"."""
    region_ids = [str(uuid.uuid4()) for _ in range(REGIONS)]
    async with store.write() as conn:
        org = await organization_with_user(conn, "u", admin=True)
        for i, rid in enumerate(region_ids):
            await regions_store.insert_region(
                conn,
                dict(
                    id=rid,
                    name=f"r{i}",
                    identifier=f"r{i}",
                    server_limit=1_000_000,
                    created_at=0.0,
                    updated_at=0.0,
                ),
            )
        for i, rid in enumerate(region_ids):  # a ring of fallbacks
            await regions_store.update_region(
                conn, rid, {"fallback_region_id": region_ids[(i + 1) % REGIONS]}
            )
        for n in range(NODES):
            node_id = f"node-{n}"
            node = node_record(node_id, region_id=region_ids[n % REGIONS], memory_mib=65_536, cpu_count=64)
            await nodes_store.insert_node(conn, node)
            await nodes_store.insert_allocations(
                conn, node_id, [(str(uuid.uuid4()), "0.0.0.0", 30_000 + p) for p in range(PORTS_PER_NODE)]
            )
    return org


#: Placements made before the timed ones, after which PostgreSQL's statistics are taken: a database that
#: has run a while has them. Without, autovacuum takes them whenever it next looks (a minute apart), in the
#: middle of a run or not, and plans cached while the instances table was nearly empty (the foreign key
#: checks' among them) scan it whole as it grows: the rate wandered between runs by half.
SETTLE = 1_000


async def settled(store: Store, service: DeployService, caller: Principal) -> None:
    await deploy_many(service, caller, SETTLE, 99)
    if not store.is_sqlite:
        async with store.engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text("ANALYZE"))
        # Connections that planned before the statistics keep their plans: start from fresh ones.
        await store.engine.dispose()


def serving(store: Store, tmp: Path, org: int) -> tuple[DeployService, Principal]:
    """A coordinator's deploy use case over the seeded store, every node Ready."""
    core = core_over(store, tmp, CoordinatorConfig(data_dir=tmp))
    for n in range(NODES):
        core.fleet.record_heartbeat(f"node-{n}", Heartbeat())
    return DeployService(core), Principal("u", "u", org, True)


async def warm(service: DeployService, caller: Principal) -> tuple[list[str], float]:
    """The first deploys read the fleet into the scheduler's view: (their ids, milliseconds)."""
    begin = time.perf_counter()
    ids = [(await service.deploy(caller, _order(f"r{i}"))).instance.id for i in range(REGIONS)]
    return ids, (time.perf_counter() - begin) * 1000


async def deploy_many(service: DeployService, caller: Principal, count: int, seed_: int) -> tuple[int, int]:
    """``count`` deploys, CONCURRENCY at a time, each starting in a random region: (placed, refused)."""
    rng = random.Random(seed_)
    left = count
    placed = refused = 0

    async def worker() -> None:
        nonlocal left, placed, refused
        while left > 0:
            left -= 1
            try:
                await service.deploy(caller, _order(f"r{rng.randrange(REGIONS)}"))
                placed += 1
            except ServiceError:
                refused += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return placed, refused


async def held_and_counted(store: Store) -> tuple[int, int, int]:
    """(allocations assigned, distinct holders, regions' live counts summed)."""
    async with store.read() as conn:
        held = await conn.execute(
            text(
                "SELECT COUNT(*), COUNT(DISTINCT instance_id) FROM allocations WHERE instance_id IS NOT NULL"
            )
        )
        assigned, holders = held.one()
        counted = (await conn.execute(text("SELECT SUM(live_count) FROM regions"))).scalar_one()
    return assigned, holders, counted


async def claims(tmp: Path, url: str) -> float:
    store = Store.open(url)
    await store.migrate()
    service, caller = serving(store, tmp, await seed(store))
    warmed, cold_ms = await warm(service, caller)
    await settled(store, service, caller)
    server_begin = None if store.is_sqlite else server_cpu_s()
    begin, cpu_begin = time.perf_counter(), time.process_time()
    placed, refused = await deploy_many(service, caller, PLACEMENTS, 3)
    elapsed = time.perf_counter() - begin
    coordinator_cpu = time.process_time() - cpu_begin
    server_end = None if store.is_sqlite else server_cpu_s()
    busy = coordinator_cpu / elapsed
    rate = placed / elapsed
    assigned, holders, counted = await held_and_counted(store)
    engine = "SQLite, FULL sync" if store.is_sqlite else "PostgreSQL"
    await store.close()
    total = placed + len(warmed) + SETTLE
    collisions = total - holders + (assigned - holders)
    print(
        f"{f'placements through the use case ({engine})':56}{rate:9.0f} placements/s   "
        f"({placed} placed, {refused} refused, {collisions} collisions, {CONCURRENCY} concurrent;"
        f" cold view of {NODES} nodes read in {cold_ms:.0f} ms; this process {busy:.0%} of a core)"
    )
    # The rate swings by half between runs on a shared machine; the CPU one placement costs does much less.
    cost = f"CPU per placement: this process {coordinator_cpu / placed * 1000:.2f} ms"
    if server_begin is not None and server_end is not None:
        cost += f" + PostgreSQL's server {(server_end - server_begin) / placed * 1000:.2f} ms"
        cost += _machine(coordinator_cpu + server_end - server_begin, elapsed)
    print(f"{'':56}{cost}")
    assert collisions == 0 and counted == total == assigned
    return rate


def _one_of_several(url: str, tmp: str, org: int, n: int, ready: Any, results: Any) -> None:
    """In a child process: one coordinator's deploy use case, started with the others on a barrier."""

    async def run() -> None:
        store = Store.open(url)
        service, caller = serving(store, Path(tmp) / f"c{n}", org)
        (Path(tmp) / f"c{n}").mkdir(exist_ok=True)
        warmed, _ = await warm(service, caller)
        ready.wait()
        begin, cpu = time.monotonic(), time.process_time()
        placed, refused = await deploy_many(service, caller, PLACEMENTS // COORDINATORS, n)
        results.put((placed + len(warmed), refused, begin, time.monotonic(), time.process_time() - cpu))
        await store.close()

    asyncio.run(run())


async def claims_on_several(tmp: Path, url: str) -> float:
    """COORDINATORS processes, each its own store and view, claiming at once on one PostgreSQL database."""
    store = Store.open(url)
    await store.migrate()
    org = await seed(store)
    service, caller = serving(store, tmp, org)
    await settled(store, service, caller)
    context = multiprocessing.get_context("spawn")
    ready, results = context.Barrier(COORDINATORS), context.Queue()
    children = [
        context.Process(target=_one_of_several, args=(url, str(tmp), org, n, ready, results))
        for n in range(COORDINATORS)
    ]
    server_begin = server_cpu_s()
    for child in children:
        child.start()
    outcomes: list[tuple[int, int, float, float, float]] = [results.get(timeout=600) for _ in children]
    server_end = server_cpu_s()  # includes the children's cold views: an upper bound
    for child in children:
        child.join()
    placed = sum(o[0] for o in outcomes) - COORDINATORS * REGIONS
    rate = placed / (max(o[3] for o in outcomes) - min(o[2] for o in outcomes))
    assigned, holders, counted = await held_and_counted(store)
    await store.close()
    total = placed + COORDINATORS * REGIONS + SETTLE
    collisions = total - holders + (assigned - holders)
    print(
        f"{f'... with {COORDINATORS} coordinators at once (PostgreSQL)':56}{rate:9.0f} placements/s   "
        f"({placed} placed, {sum(o[1] for o in outcomes)} refused, {collisions} collisions,"
        f" {CONCURRENCY} concurrent in each)"
    )
    coordinators_cpu = sum(o[4] for o in outcomes)
    cost = f"CPU per placement: the coordinators {coordinators_cpu / placed * 1000:.2f} ms"
    if server_begin is not None and server_end is not None:
        cost += f" + PostgreSQL's server {(server_end - server_begin) / placed * 1000:.2f} ms"
        cost += _machine(coordinators_cpu + server_end - server_begin, placed / rate)
    print(f"{'':56}{cost}")
    assert collisions == 0 and counted == total == assigned
    return rate


def _machine(cpu_s: float, elapsed_s: float) -> str:
    """How much of this machine the claimers and the database used: past ~85% of its cores, more
    coordinators cannot place more here, whatever the code does."""
    cores = os.cpu_count() or 1
    return f"; {cpu_s / elapsed_s:.1f} of this machine's {cores} cores busy"


def _order(region: str) -> DeployOrder:
    return DeployOrder(image="busybox", memory_mib=256, cpu_percent=10, name="b", region=region)


async def on_postgres(tmp: Path, url: str | None, rounds: int = ROUNDS) -> None:
    """``url``: an empty database, used once; without one, fresh databases in the test cluster (when it
    runs), one coordinator and three taking turns ``rounds`` times: this machine's speed swings by a
    sixth between minutes, so only rounds interleaved compare the two."""
    base = None if url else postgres_url()
    if url is None and base is None:
        print("placements through the use case (PostgreSQL): no test cluster (tests/env/ensure-postgres.sh)")
        return
    if url is not None:
        await claims(tmp, url)  # an operator's database is used once (it must be empty)
        return
    assert base is not None
    alone: list[float] = []
    together: list[float] = []
    for _ in range(rounds):
        for claimer, rates in ((claims, alone), (claims_on_several, together)):
            target = await fresh_database(base)
            try:
                rates.append(await claimer(tmp, target))
            finally:
                await drop_database(base, target)
    ratios = sorted(t / a for a, t in zip(alone, together, strict=True))
    print(
        f"{f'{COORDINATORS} coordinators together / one alone':56}{statistics.median(ratios):9.2f}"
        f"   (median of {rounds} interleaved rounds; each: {', '.join(f'{r:.2f}' for r in ratios)})"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__)
    p.add_argument("--database", help="an empty database to run the claim path on (postgresql://...)")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="one coordinator, then three, this many times")
    args = p.parse_args(argv)
    if args.database is None:
        pure_decisions()
    with tempfile.TemporaryDirectory() as tmp:
        if args.database is None or args.database.startswith("sqlite"):
            asyncio.run(claims(Path(tmp), args.database or f"sqlite:///{Path(tmp) / 'bench.db'}"))
        if args.database is None or not args.database.startswith("sqlite"):
            asyncio.run(on_postgres(Path(tmp), args.database, args.rounds))


if __name__ == "__main__":
    main()
