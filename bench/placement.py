"""Placement figures.

1. Decisions per second of the pure function over 5,000 nodes in 10 regions (each request starts in a
   random region and may fall back): every node scored (plain lists), and over the ranked view the
   coordinator keeps (RankedNodes), which walks only as far as its candidates.
2. Placements per second through the deploy use case with the database claim, on SQLite (FULL sync) in a
   temporary directory: 5,000 Ready nodes with 20 allocations each, placements issued concurrently; then
   the invariants are checked in the database (no allocation twice, counters equal to the rows). The
   first deploys read the fleet into the scheduler's view; that cold start is timed apart from the rate.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

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


async def seeded(tmp: Path) -> tuple[Store, DeployService, Principal]:
    """A migrated SQLite store with REGIONS regions in a ring of fallbacks and NODES Ready nodes."""
    config = CoordinatorConfig(data_dir=tmp)
    store = Store.open(f"sqlite:///{tmp / 'bench.db'}")
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


async def claims(tmp: Path) -> float:
    store, service, caller = await seeded(tmp)
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

    begin = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - begin
    await store.close()
    rate = len(placed) / elapsed
    with sqlite3.connect(tmp / "bench.db") as db:
        held = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT instance_id) FROM allocations WHERE instance_id IS NOT NULL"
        )
        assigned, holders = held.fetchone()
        counted = db.execute("SELECT SUM(live_count) FROM regions").fetchone()[0]
    db.close()
    total = len(placed) + len(warm)
    collisions = total - holders + (assigned - holders)
    print(
        f"placements through the use case (SQLite, FULL sync)    {rate:9.0f} placements/s   "
        f"({len(placed)} placed, {refused} refused, {collisions} collisions, {CONCURRENCY} concurrent;"
        f" cold view of {NODES} nodes read in {cold_ms:.0f} ms)"
    )
    assert collisions == 0 and counted == total == assigned
    return rate


def _order(region: str) -> DeployOrder:
    return DeployOrder(image="busybox", memory_mib=256, cpu_percent=10, name="b", region=region)


def main() -> None:
    pure_decisions()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(claims(Path(tmp)))


if __name__ == "__main__":
    main()
