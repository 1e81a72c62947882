"""The coordinator restarted under a running agent (real daemons, real Docker, fixed ports; the agent is
never restarted), as an operator's upgrade or a crash does it.

Printed:
- the time from a restarted coordinator being up (listening) until every instance is confirmed running
  again (its node online, which needs a Hello or heartbeat in the new process, and each instance
  `running`), median and worst of ROUNDS SIGKILL restarts, each after DOWN_S seconds away; and the
  time from the kill itself, which adds the coordinator's own start;
- the agent's RSS and C heap in use (glibc's live blocks, from its /metrics) before the restarts, after
  half of RESTARTS coordinator restarts and after all of them, and its thread and fd counts. Growth in
  the first half only is a one-off cost (pools and caches reaching their size); growth in the second half
  as well is a leak per reconnect, and the last figure gives it per restart.

The agent runs with its default back-off (0.5 s doubling to 30 s, full jitter), so the reconnect time
depends on how long the coordinator was away: DOWN_S is kept short, as for a restart in place. The agent
starts its back-off afresh only after a session that held for two heartbeat intervals, so each restart
waits SETTLE_S after the last one's reconnect (heartbeats every second here, to keep that short).

    python -m bench.coordinator_restart [--instances N] [--restarts N]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.daemons import (
    TEST_IMAGE,
    AgentProcess,
    Api,
    CoordinatorProcess,
    agent_figures,
    create_node,
    leave_no_containers,
    node_view,
    port_block,
    wait_for,
    wait_state,
)

ROUNDS = 5
RESTARTS = 40
DOWN_S = 1.0
#: A session counts as having held after two heartbeats.
SETTLE_S = 2.5
#: The coordinator's defaults but for the heartbeat interval (5 s by default).
DEFAULT_FLEET = {
    "heartbeat_interval_s": 1.0,
    "grace_intervals": 3,
    "offline_after_s": 60.0,
    "batch_period_s": 1.0,
    "command_wait_s": 15.0,
}


def all_confirmed(api: Api, node_id: str, ids: list[str]) -> bool:
    if not node_view(api, node_id)["isOnline"]:
        return False
    states = {i["id"]: i["state"] for i in api.get("/api/instances").body}
    return all(states.get(iid) == "running" for iid in ids)


def restart(coordinator: CoordinatorProcess, node_id: str, ids: list[str]) -> tuple[float, float]:
    """(seconds from up to every instance confirmed, seconds from the kill to the same)."""
    time.sleep(SETTLE_S)
    killed = time.perf_counter()
    coordinator.stop(signal.SIGKILL)
    time.sleep(DOWN_S)
    coordinator.start()
    up = time.perf_counter()
    api = coordinator.api()
    wait_for(lambda: all_confirmed(api, node_id, ids), 120, "every instance confirmed", interval=0.01)
    done = time.perf_counter()
    return done - up, done - killed


@dataclass(frozen=True)
class Footprint:
    rss_mib: float
    heap_in_use_mib: float
    threads: int
    fds: int


def footprint(pid: int, metrics_port: int) -> Footprint:
    proc = psutil.Process(pid)
    in_use = agent_figures(metrics_port).get("moorage_agent_heap_in_use_bytes", 0.0)
    return Footprint(proc.memory_info().rss / 2**20, in_use / 2**20, proc.num_threads(), proc.num_fds())


def run(instances: int, restarts: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        coordinator = CoordinatorProcess(Path(tmp) / "c", fleet=DEFAULT_FLEET, extra={"log_level": "warning"})
        coordinator.start()
        *ports, metrics_port = port_block(instances + 1)
        api = coordinator.api()
        node = create_node(api, ports)
        agent = AgentProcess(
            Path(tmp) / "a",
            coordinator,
            node["joinToken"],
            reconnect_initial_s=0.5,
            reconnect_max_s=30.0,
            log_level="warning",
            metrics_listen=f"127.0.0.1:{metrics_port}",
        )
        agent.start()
        try:
            wait_for(lambda: node_view(api, node["id"])["isOnline"], 30, "node online")
            body = {"image": TEST_IMAGE, "memory": 32, "cpu": 5, "nodeId": node["id"], "name": "r"}
            ids = [api.post("/api/instances/deploy", {**body, "ports": [p]}).body["id"] for p in ports]
            for iid in ids:
                wait_state(api, iid, "running", timeout=60)
            assert agent.proc is not None
            pid = agent.proc.pid
            time.sleep(2)
            seen = [footprint(pid, metrics_port)]
            from_up, from_kill = [], []
            for n in range(restarts):
                up, kill = restart(coordinator, node["id"], ids)
                if n < ROUNDS:
                    from_up.append(up)
                    from_kill.append(kill)
                if n + 1 in (restarts // 2, restarts):
                    time.sleep(2)
                    seen.append(footprint(pid, metrics_port))
            assert agent.running and agent.proc is not None and agent.proc.pid == pid, "the agent died"
        finally:
            agent.stop()
            coordinator.stop()
            leave_no_containers(node["id"])
    print(
        f"coordinator SIGKILLed, {DOWN_S:g} s away, started again; {instances} instances; "
        "the agent never restarted"
    )
    print(
        f"  up → every instance confirmed running: median {statistics.median(from_up) * 1000:7.0f} ms"
        f"   worst {max(from_up) * 1000:7.0f} ms   (n={len(from_up)})"
    )
    print(
        f"  kill → every instance confirmed running: median {statistics.median(from_kill) * 1000:7.0f} ms"
        f"   worst {max(from_kill) * 1000:7.0f} ms   (n={len(from_kill)})"
    )
    before, half, after = seen
    second_half = restarts - restarts // 2
    per_restart = (after.heap_in_use_mib - half.heap_in_use_mib) * 1024 / second_half
    print(
        f"  agent before, after {restarts // 2} and after {restarts} coordinator restarts: "
        f"RSS {before.rss_mib:.1f} → {half.rss_mib:.1f} → {after.rss_mib:.1f} MiB, "
        f"C heap in use {before.heap_in_use_mib:.2f} → {half.heap_in_use_mib:.2f} → "
        f"{after.heap_in_use_mib:.2f} MiB ({per_restart:+.0f} KiB per restart in the second half), "
        f"threads {before.threads} → {after.threads}, fds {before.fds} → {after.fds}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.coordinator_restart")
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--restarts", type=int, default=RESTARTS)
    args = parser.parse_args(argv)
    run(args.instances, max(args.restarts, ROUNDS))


if __name__ == "__main__":
    main()
