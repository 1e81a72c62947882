"""Deploy → running latency through Moorage, beside `docker run -d` of the same image on this machine.

Moorage's figure is the wall time from the deploy call to `running` reaching a client that follows
/api/events (the state and its event are one transaction; the API is then asked and must agree). Running
needs the agent's create+start and a heartbeat confirming the container runs; the agent sends that one as
soon as the start is reported, whatever the interval: measured at a 0.5 s and at the default 5 s
heartbeat. Docker's is `docker run -d` of the same container: the same limits, the port published for
TCP and UDP as the agent publishes it (each is a docker-proxy the engine starts). Printed: median and
p90 over N deploys for both, the time until the port answers HTTP, and Moorage's median beyond docker's
(goal: at most 50 ms).
"""

from __future__ import annotations

import contextlib
import functools
import json
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench.daemons import (
    TEST_IMAGE,
    AgentProcess,
    Api,
    CoordinatorProcess,
    create_node,
    instance,
    node_view,
    port_block,
    wait_for,
)

ROUNDS = 10


def _serves(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _gone(instance_id: str) -> bool:
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=moorage.instance={instance_id}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return not listed.stdout.strip()


def _summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[max(0, int(len(ordered) * 0.9) - 1)]
    median = statistics.median(values) * 1000
    return f"{name:<52} median {median:7.1f} ms   p90 {p90 * 1000:7.1f} ms   (n={len(values)})"


class RunningSeen:
    """Follows /api/events as a panel's EventSource does, on a thread of its own, and notes when each
    instance's `running` reaches it: no polling, which on this 2-core machine took CPU from the very engine
    start being timed (a 5 ms poll added ~50 ms to every start)."""

    def __init__(self, api: Api) -> None:
        req = urllib.request.Request(api.url + "/api/events", headers={"Accept": "text/event-stream"})
        req.add_header("x-api-key", str(api.key))
        self._resp = urllib.request.urlopen(req, timeout=60)
        self._seen: dict[str, float] = {}
        self._arrived = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="events", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        # Closing the response under the reading thread ends it with one of these.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            for raw in self._resp:
                if not raw.startswith(b"data: "):
                    continue
                event = json.loads(raw[6:])
                if event["kind"] == "instance.state" and event["data"].get("new") == "running":
                    with self._arrived:
                        self._seen.setdefault(event["instanceId"], time.perf_counter())
                        self._arrived.notify_all()

    def wait(self, instance_id: str, timeout: float = 30) -> float:
        with self._arrived:
            if not self._arrived.wait_for(lambda: instance_id in self._seen, timeout):
                raise TimeoutError(f"instance {instance_id} never showed running")
            return self._seen[instance_id]

    def close(self) -> None:
        self._resp.close()


def moorage(rounds: int, heartbeat_s: float) -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        coordinator = CoordinatorProcess(Path(tmp) / "c", fleet={"heartbeat_interval_s": heartbeat_s})
        coordinator.start()
        ports = port_block(rounds)
        api = coordinator.api()
        node = create_node(api, ports)
        agent = AgentProcess(Path(tmp) / "a", coordinator, node["joinToken"])
        agent.start()
        seen = None
        try:
            wait_for(lambda: node_view(api, node["id"])["isOnline"], 30, "node online")
            seen = RunningSeen(api)
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
                to_running.append(seen.wait(iid) - start)
                assert instance(api, iid)["state"] == "running"  # what the event said, the API shows
                wait_for(functools.partial(_serves, port), 10, "http", 0.005)
                to_serving.append(time.perf_counter() - start)
                api.delete("/api/instance/delete", {"id": iid})
                # As `docker rm -f` below: the next deploy starts once this container is gone, so the
                # engine is not removing one while starting the next.
                wait_for(functools.partial(_gone, iid), 30, "container removed", 0.01)
            return to_running, to_serving
        finally:
            if seen is not None:
                seen.close()
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
                f"127.0.0.1:{port}:{port}/tcp",
                "-p",
                f"127.0.0.1:{port}:{port}/udp",
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
    medians: dict[float, float] = {}
    for heartbeat in (0.5, 5.0):
        running, serving = moorage(ROUNDS, heartbeat)
        medians[heartbeat] = statistics.median(running)
        print(_summary(f"moorage deploy → running (hb {heartbeat}s)", running))
        print(_summary(f"moorage deploy → port answers HTTP (hb {heartbeat}s)", serving))
    ran, serving = docker_run(ROUNDS)
    print(_summary("docker run -d (command returns)", ran))
    print(_summary("docker run -d → port answers HTTP", serving))
    docker = statistics.median(ran)
    beyond = ", ".join(f"{(m - docker) * 1000:+.0f} ms at hb {hb}s" for hb, m in medians.items())
    print(f"{'moorage running beyond docker run -d (median)':<52} {beyond}   (goal: ≤ +50 ms)")


if __name__ == "__main__":
    main()
