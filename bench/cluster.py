"""Several coordinators on one PostgreSQL database (real daemons; agents are the real agent code over an
in-memory runtime, bench/fakeagent.py, so the figures are the coordinators' own).

Printed:
- a power action's API latency (it waits for the agent's answer) through the coordinator holding the
  node's session and through another one, whose command travels over LISTEN/NOTIFY to the holder and
  back: p50 and p99 of each, and the relay's own cost (the difference);
- leader failover: the time from SIGKILL of the leading coordinator until another says it leads.

    python -m bench.cluster [--database URL] [--rounds N]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import time
from pathlib import Path

from bench.daemons import Api, CoordinatorProcess, FakeAgents, create_node, port_block, wait_for, wait_state
from bench.databases import on_postgres

ROUNDS = 300
CLUSTER_KEY = "bench-cluster-key-0123456789abcdefghijklmnop"


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def timed_power(api: Api, iid: str, rounds: int) -> list[float]:
    took = []
    for n in range(rounds):
        action = "stop" if n % 2 == 0 else "start"
        begin = time.perf_counter()
        r = api.post(f"/api/instances/{iid}/power", {"action": action})
        took.append((time.perf_counter() - begin) * 1000)
        assert r.status == 200, r.body
    return took


def run(database: str, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="moorage-bench-cluster-") as tmp_name:
        tmp = Path(tmp_name)
        key = tmp / "cluster.key"
        key.write_text(CLUSTER_KEY)
        storage = {"storage": {"database": database, "cluster_key_file": str(key)}}
        a = CoordinatorProcess(tmp / "a", extra=storage)
        b = CoordinatorProcess(tmp / "b", extra=storage)
        agents: FakeAgents | None = None
        try:
            a.start()
            b.start()
            api_a = a.api()
            api_b = Api(b.endpoints["http"], a.admin_key)
            node = create_node(api_a, port_block(2))
            agents = FakeAgents(tmp / "agents", a, [node["joinToken"]])
            agents.start()
            wait_for(lambda: api_a.get("/api/health").body["nodesConnected"] == 1, 30, "the agent on a")
            body = {"image": "busybox-httpd", "memory": "64", "cpu": "10", "nodeId": node["id"], "name": "b"}
            made = api_b.post("/api/instances/deploy", body)
            assert made.status == 201, made.body
            iid = made.body["id"]
            wait_state(api_a, iid, "running")
            local = timed_power(api_a, iid, rounds)
            relayed = timed_power(api_b, iid, rounds)
            print(f"power action through the session's holder: p50 {percentile(local, 50):.1f} ms, "
                  f"p99 {percentile(local, 99):.1f} ms ({rounds} actions)")  # fmt: skip
            print(f"through another (LISTEN/NOTIFY both ways): p50 {percentile(relayed, 50):.1f} ms, "
                  f"p99 {percentile(relayed, 99):.1f} ms; the relay's cost at p50 "
                  f"{statistics.median(relayed) - statistics.median(local):.1f} ms")  # fmt: skip
            assert api_a.get("/api/health").body["leader"]
            a.stop(signal.SIGKILL)
            killed = time.perf_counter()
            wait_for(lambda: api_b.get("/api/health").body["leader"], 30, "b to lead", interval=0.01)
            print(f"leader failover (SIGKILL of the leader until another leads): "
                  f"{(time.perf_counter() - killed) * 1000:.0f} ms")  # fmt: skip
        finally:
            if agents is not None:
                agents.stop()
            a.stop()
            b.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    p.add_argument(
        "--database", help="an empty PostgreSQL database (default: a fresh one in the test cluster)"
    )
    p.add_argument("--rounds", type=int, default=ROUNDS)
    args = p.parse_args(argv)
    print("Several coordinators on one PostgreSQL database")
    on_postgres(lambda url: run(url, args.rounds), args.database, "several coordinators")


if __name__ == "__main__":
    main()
