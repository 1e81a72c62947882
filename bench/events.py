"""The event stream under load: 1,000 simulated nodes (real gRPC sessions with mutual TLS, as in
bench/heartbeats.py) whose containers go down and come back, each change an instance.state event, followed
by 50 SSE clients in a process of their own.

Printed, for each rate of change: events written per second, events delivered per second (over all
clients), the p50/p99/max delay from the coordinator writing an event to a client reading it (one host, one
clock), and the coordinator's CPU without clients and with them (the difference is what the stream costs).

    python -m bench.events                       # the whole benchmark
    python -m bench.events listen SPEC.json      # the SSE clients' process (the benchmark starts it)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.daemons import REPO, CoordinatorProcess, wait_for
from bench.heartbeats import _seed, scrape, spec_for, start_generators, stop_generators

NODES = 1_000
CLIENTS = 50
#: The heartbeat interval: 1,000 sessions at 1 s already take a core of this 2-core machine's coordinator.
INTERVAL_S = 5.0
#: Beats between one node's changes: 5 → 40 changes a second over 1,000 nodes, 1 → 200.
FLIPS = (5, 1)
WINDOW_S = 15.0


async def _listen(spec: dict[str, Any]) -> None:
    """CLIENTS streams for spec["seconds"]; prints one JSON line: every delay seen, events per client."""
    delays: list[float] = []
    counts: list[int] = []
    headers = {"Accept": "text/event-stream", "x-api-key": spec["key"]}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)

    async def one(session: aiohttp.ClientSession, ready: asyncio.Event) -> None:
        got = 0
        async with session.get(spec["url"] + "/api/events", headers=headers) as resp:
            assert resp.status == 200, resp.status
            ready.set()
            deadline = time.monotonic() + spec["seconds"]
            while time.monotonic() < deadline:
                try:
                    line = await asyncio.wait_for(resp.content.readline(), deadline - time.monotonic())
                except TimeoutError:
                    break
                if line.startswith(b"data: "):
                    now = time.time()
                    at = json.loads(line[6:])["at"]
                    delays.append(now - dt.datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp())
                    got += 1
        counts.append(got)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        readies = [asyncio.Event() for _ in range(spec["clients"])]
        tasks = [asyncio.create_task(one(session, r)) for r in readies]
        await asyncio.gather(*(r.wait() for r in readies))
        print("ready", flush=True)
        await asyncio.gather(*tasks)
    print(json.dumps({"delays": delays, "counts": counts}), flush=True)


def _cores(pid: int, seconds: float) -> float:
    proc = psutil.Process(pid)
    cpu0, t0 = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    cpu1 = proc.cpu_times()
    return (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (time.monotonic() - t0)


def _newest(coordinator: CoordinatorProcess) -> int:
    return int(coordinator.query("SELECT COALESCE(MAX(id), 0) FROM events")[0][0])


def _rate(coordinator: CoordinatorProcess, seeded: dict[str, Any], flip: int, tmp: Path) -> None:
    spec = {**spec_for(coordinator, seeded, INTERVAL_S), "flip_every": flip}
    procs = start_generators(spec, seeded["nodes"][:NODES], tmp)
    pid = coordinator.proc.pid  # type: ignore[union-attr]
    try:
        wait_for(lambda: scrape(coordinator).get("moorage_agent_sessions") == NODES, 60, f"{NODES} sessions")
        time.sleep(flip * INTERVAL_S * 1.5)  # past the first changes of every node: a steady rate
        first = _newest(coordinator)
        alone = _cores(pid, WINDOW_S)
        written = (_newest(coordinator) - first) / WINDOW_S
        listen = tmp / "listen.json"
        listen.write_text(
            json.dumps(
                {
                    "url": coordinator.endpoints["http"],
                    "key": coordinator.admin_key,
                    "clients": CLIENTS,
                    "seconds": WINDOW_S + 2,
                }
            )
        )
        clients = subprocess.Popen(
            [sys.executable, "-m", "bench.events", "listen", str(listen)], cwd=REPO, stdout=subprocess.PIPE
        )
        assert clients.stdout is not None
        if clients.stdout.readline().strip() != b"ready":
            raise RuntimeError("the SSE clients did not connect")
        first = _newest(coordinator)
        with_clients = _cores(pid, WINDOW_S)
        written_then = (_newest(coordinator) - first) / WINDOW_S
        result = json.loads(clients.stdout.readline())
        clients.wait()
        delays = sorted(result["delays"])
        p99 = delays[int(0.99 * (len(delays) - 1))] if delays else float("nan")
        print(
            f"{written:4.0f} events/s written (a change every {flip * INTERVAL_S:g} s a node; "
            f"{written_then:.0f}/s while followed): "
            f"{len(delays) / (WINDOW_S + 2):7.0f} events/s delivered to {CLIENTS} clients "
            f"(min {min(result['counts'])}, max {max(result['counts'])} each)   "
            f"delay p50 {statistics.median(delays) * 1000:5.1f} ms  p99 {p99 * 1000:5.1f} ms  "
            f"max {delays[-1] * 1000:6.1f} ms   "
            f"coordinator CPU {alone:.2f} cores alone, {with_clients:.2f} with the clients "
            f"(+{with_clients - alone:.2f})"
        )
    finally:
        stop_generators(procs)


def main() -> None:
    print(
        f"events: {NODES} simulated nodes at a {INTERVAL_S:g} s heartbeat, {CLIENTS} SSE clients in another"
        " process; delay: from the coordinator writing an event to a client reading it"
    )
    with tempfile.TemporaryDirectory() as raw:
        tmp = Path(raw)
        data_dir = tmp / "coordinator"
        data_dir.mkdir()
        fleet = {"heartbeat_interval_s": INTERVAL_S, "offline_after_s": 300.0, "batch_period_s": 1.0}
        coordinator = CoordinatorProcess(data_dir, fleet=fleet, extra={"log_level": "warning"})
        coordinator.start()  # once, to create its database, CA and admin key; then the fleet is seeded
        coordinator.stop()
        seeded = asyncio.run(_seed(data_dir, NODES))
        coordinator.start()
        try:
            for flip in FLIPS:
                _rate(coordinator, seeded, flip, tmp)
        finally:
            coordinator.stop()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "listen":
        asyncio.run(_listen(json.loads(Path(sys.argv[2]).read_text())))
    else:
        main()
