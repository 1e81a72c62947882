"""Placement figures.

1. Decisions per second of the pure function over 5,000 nodes in 10 regions (each request starts in a
   random region and may fall back): every node scored (plain lists), and over the ranked view the
   coordinator keeps (RankedNodes), which walks only as far as its candidates.
2. Placements per second through the deploy use case with the database claim, on SQLite (FULL sync) in a
   temporary directory: 5,000 Ready nodes with 20 allocations each, placements issued concurrently; then
   the invariants are checked in the database (no allocation twice, counters equal to the rows). The
   first deploys read the fleet into the scheduler's view; that cold start is timed apart from the rate.
   The same on PostgreSQL: a fresh database in the test cluster, or ``--database URL`` (an empty one).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import text

from bench.databases import drop_database, fresh_database, postgres_url
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


async def seeded(tmp: Path, url: str) -> tuple[Store, DeployService, Principal]:
    """A migrated store (``url``: an empty database) with REGIONS regions in a ring of fallbacks and NODES
    Ready nodes."""
    config = CoordinatorConfig(data_dir=tmp)
    store = Store.open(url)
    await store.migrate()
    core = core_over(store, tmp, config)
    fleet = core.fleet
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
    for n in range(NODES):
        fleet.record_heartbeat(f"node-{n}", Heartbeat())
    return store, DeployService(core), Principal("u", "u", org, True)


async def claims(tmp: Path, url: str) -> float:
    store, service, caller = await seeded(tmp, url)
    rng = random.Random(3)
    begin = time.perf_counter()
    warm = [
        (await service.deploy(caller, _order(f"r{i}"))).instance.id for i in range(REGIONS)
    ]  # the first deploys read the fleet into the view
    cold_ms = (time.perf_counter() - begin) * 1000
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(PLACEMENTS):
        queue.put_nowait(i)
    placed: list[str] = []
    refused = 0

    async def worker() -> None:
        nonlocal refused
        while not queue.empty():
            queue.get_nowait()
            try:
                placed.append(
                    (await service.deploy(caller, _order(f"r{rng.randrange(REGIONS)}"))).instance.id
                )
            except ServiceError:
                refused += 1

    begin, cpu_begin = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - begin
    busy = (time.process_time() - cpu_begin) / elapsed
    rate = len(placed) / elapsed
    async with store.read() as conn:
        held = await conn.execute(
            text(
                "SELECT COUNT(*), COUNT(DISTINCT instance_id) FROM allocations WHERE instance_id IS NOT NULL"
            )
        )
        assigned, holders = held.one()
        counted = (await conn.execute(text("SELECT SUM(live_count) FROM regions"))).scalar_one()
    engine = "SQLite, FULL sync" if store.is_sqlite else "PostgreSQL"
    await store.close()
    total = len(placed) + len(warm)
    collisions = total - holders + (assigned - holders)
    print(
        f"{f'placements through the use case ({engine})':56}{rate:9.0f} placements/s   "
        f"({len(placed)} placed, {refused} refused, {collisions} collisions, {CONCURRENCY} concurrent;"
        f" cold view of {NODES} nodes read in {cold_ms:.0f} ms; this process {busy:.0%} of a core)"
    )
    assert collisions == 0 and counted == total == assigned
    return rate


def _order(region: str) -> DeployOrder:
    return DeployOrder(image="busybox", memory_mib=256, cpu_percent=10, name="b", region=region)


async def on_postgres(tmp: Path, url: str | None) -> None:
    """``url``: an empty database; without one, a fresh database in the test cluster (when it runs)."""
    base = None if url else postgres_url()
    if url is None and base is None:
        print("placements through the use case (PostgreSQL): no test cluster (tests/env/ensure-postgres.sh)")
        return
    target = url or await fresh_database(base or "")
    try:
        await claims(tmp, target)
    finally:
        if url is None and base is not None:
            await drop_database(base, target)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__)
    p.add_argument("--database", help="an empty database to run the claim path on (postgresql://...)")
    args = p.parse_args(argv)
    if args.database is None:
        pure_decisions()
    with tempfile.TemporaryDirectory() as tmp:
        if args.database is None or args.database.startswith("sqlite"):
            asyncio.run(claims(Path(tmp), args.database or f"sqlite:///{Path(tmp) / 'bench.db'}"))
        if args.database is None or not args.database.startswith("sqlite"):
            asyncio.run(on_postgres(Path(tmp), args.database))


if __name__ == "__main__":
    main()
