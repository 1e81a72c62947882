"""Deploy → running latency through Moorage, beside `docker run -d` of the same image on this machine.

Moorage's figure is the wall time from the deploy call to the API showing `running` (which needs the
agent's create+start and a heartbeat confirming the container runs; heartbeats here every 0.5 s, so half
an interval is added on average — with the default 5 s interval that wait dominates). Printed:
median and p90 over N deploys for both, plus the time until the port answers HTTP.
"""

from __future__ import annotations

import functools
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.daemons import (
    TEST_IMAGE,
    AgentProcess,
    CoordinatorProcess,
    create_node,
    node_view,
    port_block,
    wait_for,
    wait_state,
)

ROUNDS = 10


def _serves(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[max(0, int(len(ordered) * 0.9) - 1)]
    median = statistics.median(values) * 1000
    return f"{name:<52} median {median:7.1f} ms   p90 {p90 * 1000:7.1f} ms   (n={len(values)})"


def moorage(rounds: int, heartbeat_s: float) -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        coordinator = CoordinatorProcess(Path(tmp) / "c", fleet={"heartbeat_interval_s": heartbeat_s})
        coordinator.start()
        ports = port_block(rounds)
        api = coordinator.api()
        node = create_node(api, ports)
        agent = AgentProcess(Path(tmp) / "a", coordinator, node["joinToken"])
        agent.start()
        try:
            wait_for(lambda: node_view(api, node["id"])["isOnline"], 30, "node online")
            to_running, to_serving = [], []
            for port in ports:
                body = {
                    "image": TEST_IMAGE,
                    "memory": 64,
                    "cpu": 50,
                    "ports": [port],
                    "nodeId": node["id"],
                    "name": "b",
                }
                start = time.perf_counter()
                iid = api.post("/api/instances/deploy", body).body["id"]
                wait_state(api, iid, "running", interval=0.005)
                to_running.append(time.perf_counter() - start)
                wait_for(functools.partial(_serves, port), 10, "http", 0.005)
                to_serving.append(time.perf_counter() - start)
                api.delete("/api/instance/delete", {"id": iid})
            return to_running, to_serving
        finally:
            agent.stop()
            coordinator.stop()


def docker_run(rounds: int) -> tuple[list[float], list[float]]:
    ran, serving = [], []
    for port in port_block(rounds):
        start = time.perf_counter()
        cid = subprocess.run(
            [
                "docker",
                "run",
                "-d",
                "-e",
                f"SERVER_PORT={port}",
                "-p",
                f"127.0.0.1:{port}:{port}",
                "--memory",
                "64m",
                "--cpus",
                "0.5",
                TEST_IMAGE,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        ran.append(time.perf_counter() - start)
        wait_for(functools.partial(_serves, port), 10, "http", 0.005)
        serving.append(time.perf_counter() - start)
        subprocess.run(["docker", "rm", "-f", cid], check=True, capture_output=True)
    return ran, serving


def main() -> None:
    print(f"deploy → running over {ROUNDS} deploys (busybox httpd, 64 MiB, 50% CPU)")
    for heartbeat in (0.5, 5.0):
        running, serving = moorage(ROUNDS, heartbeat)
        print(_summary(f"moorage deploy → API shows running (hb {heartbeat}s)", running))
        print(_summary(f"moorage deploy → port answers HTTP (hb {heartbeat}s)", serving))
    ran, serving = docker_run(ROUNDS)
    print(_summary("docker run -d (command returns)", ran))
    print(_summary("docker run -d → port answers HTTP", serving))


if __name__ == "__main__":
    main()
