"""Heartbeat ingestion spread over several coordinators on one PostgreSQL database: 20,000 simulated agents
(the same sessions as bench/heartbeats.py: real gRPC, mutual TLS, partial heartbeats) split evenly over two
real coordinator processes, each measured as one coordinator is there: RSS, CPU, p99 delay, batch writes.
Each coordinator also reads the other's nodes every batch period (who holds what, their lastChecked), a
cost one coordinator alone does not pay. The PostgreSQL server's CPU is printed beside.

    python -m bench.heartbeats_cluster [--sessions N] [--database URL]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.daemons import CoordinatorProcess, wait_for
from bench.databases import on_postgres, server_cpu_s
from bench.heartbeats import (
    FLEET,
    SETTLE_S,
    STEADY_S,
    measure_together,
    quiet,
    scrape,
    seed,
    spec_for,
    start_generators,
    stop_generators,
)
from coordinator.security.cluster import read_cluster_key
from coordinator.service.bootstrap import load_secrets
from coordinator.store.engine import Store

SESSIONS = 20_000
COORDINATORS = 2
CLUSTER_KEY = "bench-heartbeats-cluster-key-0123456789abcdef"


def _sessions(coordinator: CoordinatorProcess) -> float | None:
    return scrape(coordinator).get("moorage_agent_sessions")


async def _secrets_and_seed(database: str, key_file: Path, data_dir: Path, count: int) -> dict[str, Any]:
    store = Store.open(database)
    secrets = await load_secrets(store, read_cluster_key(key_file), data_dir, time.time())
    return await seed(store, secrets.ca, count)


def run(database: str, sessions: int) -> None:
    with tempfile.TemporaryDirectory(prefix="moorage-bench-hb-cluster-") as raw:
        tmp = Path(raw)
        key_file = tmp / "cluster.key"
        key_file.write_text(CLUSTER_KEY)
        extra = {
            "log_level": "warning",
            "storage": {"database": database, "cluster_key_file": str(key_file)},
        }
        coordinators = [
            CoordinatorProcess(tmp / f"c{n}", fleet=FLEET, extra=extra) for n in range(COORDINATORS)
        ]
        coordinators[0].start()  # the cluster's secrets into the database, then the fleet is seeded
        coordinators[0].stop()
        for other in coordinators[1:]:  # the admin key is the cluster's: each reads /metrics with it
            other.data_dir.mkdir(parents=True, exist_ok=True)
            (other.data_dir / "admin.key").write_text(coordinators[0].admin_key)
        seeded = asyncio.run(_secrets_and_seed(database, key_file, coordinators[0].data_dir, sessions))
        procs = []
        try:
            for c in coordinators:
                c.start()
            started = time.monotonic()
            share = sessions // COORDINATORS
            for n, c in enumerate(coordinators):
                nodes = seeded["nodes"][n * share : (n + 1) * share]
                procs += start_generators(spec_for(c, seeded, STEADY_S), nodes, tmp, generators=2)
            wait_for(
                lambda: all(_sessions(c) == share for c in coordinators), 300, f"{share} sessions on each"
            )
            connect_s = time.monotonic() - started
            quiet(coordinators[0])
            time.sleep(SETTLE_S / 2)
            pg_before, at = server_cpu_s(), time.monotonic()
            windows = measure_together(coordinators, SETTLE_S)
            pg_after, elapsed = server_cpu_s(), time.monotonic() - at
            print(
                f"{sessions:,} sessions at {STEADY_S:g} s over {COORDINATORS} coordinators on PostgreSQL "
                f"(all up in {connect_s:.0f} s):"
            )
            for n, w in enumerate(windows):
                print(
                    f"  coordinator {n + 1}: {share:,} sessions   RSS {w.rss_mib:5.0f} MiB   {w.rate:5.0f} "
                    f"heartbeats/s on {w.cores:.2f} cores   "
                    f"p99 delay {w.p99('moorage_heartbeat_delay_seconds')}   "
                    f"p99 batch write {w.p99('moorage_batch_write_seconds')}"
                )
            if pg_before is not None and pg_after is not None:
                print(f"  the PostgreSQL server: {(pg_after - pg_before) / elapsed:.2f} cores")
        finally:
            stop_generators(procs)
            for c in coordinators:
                c.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.heartbeats_cluster", description=__doc__)
    p.add_argument("--sessions", type=int, default=SESSIONS)
    p.add_argument(
        "--database", help="an empty PostgreSQL database (default: a fresh one in the test cluster)"
    )
    args = p.parse_args(argv)
    on_postgres(lambda url: run(url, args.sessions), args.database, "heartbeats over several coordinators")


if __name__ == "__main__":
    main()
