"""The fleet view stays true through real faults: a real coordinator and agent as subprocesses, a real
Docker engine, real signals. Crashed containers, restarted agents, silent nodes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest

from agent.runtime.base import LABEL_INSTANCE, LABEL_MANAGED, LABEL_NODE
from bench.daemons import (
    REPO,
    TEST_FLEET,
    TEST_IMAGE,
    AgentProcess,
    OneNodeFleet,
    instance,
    node_view,
    one_node_fleet,
    wait_for,
    wait_state,
)
from tests.dockerenv import require_docker, serves

pytestmark = pytest.mark.docker

#: The agent's crash back-off in these tests: quick, and a loop after three crashes in a row.
RESTART = {"initial_delay_s": 0.5, "max_delay_s": 2.0, "reset_after_s": 30.0, "crash_loop_after": 3}
#: The agent's options here: that back-off, and containers nobody wants noticed (resync) and removed quickly.
AGENT: dict[str, Any] = {"restart": RESTART, "resync_interval_s": 2.0, "unknown_container_grace_s": 3.0}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneNodeFleet]:
    require_docker()
    with one_node_fleet(tmp_path_factory.mktemp("truth"), ports=18, **AGENT) as found:
        yield found


def deploy(fleet: OneNodeFleet, port: int, name: str, image: str = TEST_IMAGE) -> dict[str, Any]:
    return fleet.deploy(port, name, image)


def container_state(engine: docker.DockerClient, container_id: str) -> dict[str, Any]:
    state: dict[str, Any] = engine.api.inspect_container(container_id)["State"]
    return state


def test_a_killed_process_makes_the_instance_unhealthy_then_it_is_restarted(
    fleet: OneNodeFleet, engine: docker.DockerClient
) -> None:
    port = fleet.ports[0]
    iid = deploy(fleet, port, "crashy")["id"]
    running = wait_state(fleet.api, iid, "running")
    cid = running["ContainerId"]
    pid = container_state(engine, cid)["Pid"]
    os.kill(pid, signal.SIGKILL)  # the container's own process, from the host: a crash, not a stop
    unhealthy = wait_state(fleet.api, iid, "unhealthy", timeout=5, interval=0.02)
    assert "exited with code 137" in unhealthy["error"] and "restarting in" in unhealthy["error"]
    back = wait_state(fleet.api, iid, "running", timeout=10)
    assert back["ContainerId"] == cid and back["error"] is None  # the same container, started again
    assert back["restarts"] == 1
    wait_for(lambda: serves(port), 5, "the restarted container to serve")
    assert container_state(engine, cid)["Pid"] != pid


def test_a_crash_loop_is_reported_and_restarts_go_on_further_apart(fleet: OneNodeFleet) -> None:
    image = {"name": "crasher", "image": TEST_IMAGE, "startup": ["sh", "-c", "sleep 0.2; exit 3"]}
    assert fleet.api.post("/api/images", image).status == 201
    iid = deploy(fleet, fleet.ports[1], "looping", image="crasher")["id"]

    def looping() -> dict[str, Any] | None:
        found = instance(fleet.api, iid)
        return found if found["state"] == "unhealthy" and "crash loop" in (found["error"] or "") else None

    found = wait_for(looping, 20, "the crash loop to be reported")
    assert "exited with code 3" in found["error"] and "3 times in a row" in found["error"]
    assert fleet.api.delete("/api/instance/delete", {"id": iid}).body["state"] == "released"


def test_an_agent_restart_adopts_five_containers_without_restarting_any(
    fleet: OneNodeFleet, engine: docker.DockerClient
) -> None:
    ids = [deploy(fleet, fleet.ports[2 + n], f"keep-{n}")["id"] for n in range(5)]
    containers = [wait_state(fleet.api, iid, "running")["ContainerId"] for iid in ids]
    started = {cid: container_state(engine, cid)["StartedAt"] for cid in containers}

    fleet.agent.stop(signal.SIGKILL)  # no goodbye: the agent is simply gone
    wait_for(lambda: not node_view(fleet.api, fleet.node_id)["connected"], 10, "the session to drop")
    fleet.agent = AgentProcess(fleet.agent.data_dir, fleet.coordinator, None, **AGENT)
    fleet.agent.start()
    wait_for(lambda: node_view(fleet.api, fleet.node_id)["connected"], 20, "the new agent's session")
    for iid, cid in zip(ids, containers, strict=True):
        assert wait_state(fleet.api, iid, "running")["ContainerId"] == cid
    time.sleep(1.0)  # the reconcile after the Welcome has had two heartbeats' time: it would have acted
    assert {cid: container_state(engine, cid)["StartedAt"] for cid in containers} == started
    assert all(serves(fleet.ports[2 + n]) for n in range(5))
    for iid in ids:
        fleet.api.delete("/api/instance/delete", {"id": iid})


def test_a_silent_node_goes_abnormal_then_offline_and_comes_back_untouched(
    fleet: OneNodeFleet, engine: docker.DockerClient
) -> None:
    api = fleet.api
    port = fleet.ports[7]
    iid = deploy(fleet, port, "patient")["id"]
    cid = wait_state(api, iid, "running")["ContainerId"]
    started = container_state(engine, cid)["StartedAt"]
    assert node_view(api, fleet.node_id)["status"] == "ready"

    fleet.agent.stop(signal.SIGTERM)
    # Grace: 3 intervals of 0.5 s; offline after 4 s (bench/daemons.py TEST_FLEET), plus the monitor's wake.
    wait_for(lambda: node_view(api, fleet.node_id)["status"] == "heartbeat_abnormal", 1.5 + 1.0, "abnormal")
    wait_for(lambda: instance(api, iid)["state"] == "unhealthy", 2.0, "its instance to turn unhealthy")
    assert "stopped sending heartbeats" in instance(api, iid)["error"]
    wait_for(lambda: node_view(api, fleet.node_id)["status"] == "offline", 4.0 + 1.0, "offline")
    assert serves(port)  # nobody touched the container meanwhile

    fleet.agent = AgentProcess(fleet.agent.data_dir, fleet.coordinator, None, **AGENT)
    fleet.agent.start()
    wait_for(lambda: node_view(api, fleet.node_id)["status"] == "ready", 20, "ready again")
    back = wait_state(api, iid, "running", timeout=10)
    assert back["ContainerId"] == cid and container_state(engine, cid)["StartedAt"] == started


PAYLOAD = 4 * 1024 * 1024
#: busybox httpd serving a 4 MiB file as well as the test page (the test image's own command, plus dd).
BIG_FILE_IMAGE = {
    "name": "bigfile",
    "image": TEST_IMAGE,
    "startup": [
        "sh",
        "-c",
        f"dd if=/dev/zero of=/www/big bs=1024 count={PAYLOAD // 1024} 2>/dev/null; "
        'trap "kill $pid; exit 0" TERM; httpd -f -p ${SERVER_PORT:-8080} -h /www & pid=$!; wait $pid',
    ],
}


def download(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/big", timeout=10) as resp:
        return len(resp.read())


def host_side_rx(engine: docker.DockerClient, container_id: str) -> int:
    """What the container sent, as the host end of its veth pair counts it (it receives what eth0 sends)."""
    peer = engine.containers.get(container_id).exec_run("cat /sys/class/net/eth0/iflink").output.decode()
    for iface in os.listdir("/sys/class/net"):
        with open(f"/sys/class/net/{iface}/ifindex") as f:
            if f.read().strip() == peer.strip():
                with open(f"/sys/class/net/{iface}/statistics/rx_bytes") as counter:
                    return int(counter.read())
    raise AssertionError(f"no host interface with ifindex {peer}")


#: Bytes on the wire per payload byte at most: headers count, and how many depends on segmentation offload
#: (0.2% over with 64 KiB GSO segments, ~5-10% with MSS-sized ones, both seen here). Counting a download
#: twice would be +100%.
WIRE = 1.15


def settled_network(fleet: OneNodeFleet, iid: str, at_least: int) -> dict[str, Any]:
    """The instance's network totals once they reached ``at_least`` sent bytes and stopped moving."""
    last: list[int] = []

    def check() -> dict[str, Any] | None:
        net: dict[str, Any] = instance(fleet.api, iid)["network"]
        last.append(net["txBytes"])
        return net if net["txBytes"] >= at_least and last[-3:] == [net["txBytes"]] * 3 else None

    found: dict[str, Any] = wait_for(check, 10, f"{at_least} bytes sent to show", interval=0.3)
    return found


def test_bandwidth_totals_match_the_payload_and_the_host_interface_across_restarts(
    fleet: OneNodeFleet, engine: docker.DockerClient
) -> None:
    assert fleet.api.post("/api/images", BIG_FILE_IMAGE).status == 201
    port = fleet.ports[8]
    iid = deploy(fleet, port, "downloads", image="bigfile")["id"]
    cid = wait_state(fleet.api, iid, "running")["ContainerId"]
    wait_for(lambda: serves(port), 5, "the page")

    assert download(port) == PAYLOAD
    net = settled_network(fleet, iid, PAYLOAD)
    assert PAYLOAD <= net["txBytes"] <= PAYLOAD * WIRE, net
    veth = host_side_rx(engine, cid)
    assert abs(net["txBytes"] - veth) <= 0.02 * veth, (net, veth)
    assert net["rxBytes"] > 0

    # The coordinator restarts: the totals survive, and the same counters are not added twice.
    restart_coordinator(fleet, signal.SIGTERM)
    time.sleep(1.0)  # two heartbeats of the same counters
    # Not a byte lost; counted twice it would be 4 MiB more (idle ARP replies may add a few bytes).
    assert net["txBytes"] <= instance(fleet.api, iid)["network"]["txBytes"] <= net["txBytes"] + 4096

    # The container restarts (a new namespace counting from zero): the totals go on from where they were.
    r = fleet.api.post(f"/api/instances/{iid}/power", {"action": "restart"})
    assert r.status == 200, r.body
    wait_state(fleet.api, iid, "running")
    wait_for(lambda: serves(port), 5, "the page after the restart")
    assert download(port) == PAYLOAD
    again = settled_network(fleet, iid, net["txBytes"] + PAYLOAD)
    assert again["txBytes"] <= net["txBytes"] + PAYLOAD * WIRE
    fleet.api.delete("/api/instance/delete", {"id": iid})


def restart_coordinator(fleet: OneNodeFleet, coordinator_signal: int) -> None:
    """The coordinator alone, in place (same ports, as an operator restarts it); the agent keeps running
    and reconnects on its own."""
    agent_pid = fleet.agent.proc.pid if fleet.agent.proc else None
    fleet.coordinator.stop(coordinator_signal)
    fleet.coordinator.start()
    wait_for(lambda: node_view(fleet.api, fleet.node_id)["status"] == "ready", 20, "the node back")
    assert fleet.agent.running and fleet.agent.proc and fleet.agent.proc.pid == agent_pid


def test_metrics_count_sessions_and_heartbeats(fleet: OneNodeFleet) -> None:
    def scrape() -> str:
        r = urllib.request.Request(fleet.coordinator.endpoints["http"] + "/metrics")
        r.add_header("x-api-key", fleet.coordinator.admin_key)
        with urllib.request.urlopen(r, timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain")
            text: str = resp.read().decode()
        return text

    def heartbeats(text: str) -> float:
        return float(
            next(line for line in text.splitlines() if line.startswith("moorage_heartbeats_total ")).split()[
                1
            ]
        )

    first = scrape()
    assert "moorage_agent_sessions 1.0" in first
    assert 'moorage_heartbeat_handling_seconds_bucket{le="0.02"}' in first
    wait_for(lambda: heartbeats(scrape()) >= heartbeats(first) + 2, 5, "two more heartbeats counted")


def test_an_oom_kill_is_reported_with_its_reason_and_restarted(fleet: OneNodeFleet) -> None:
    # A shell doubling a string until the 64 MiB limit kills it (no swap beyond the limit).
    hog = {
        "name": "hog",
        "image": TEST_IMAGE,
        "startup": ["sh", "-c", "sleep 1; x=0123456789; while :; do x=$x$x; done"],
    }
    assert fleet.api.post("/api/images", hog).status == 201
    iid = deploy(fleet, fleet.ports[12], "hog", image="hog")["id"]

    def oom_killed() -> dict[str, Any] | None:
        found = instance(fleet.api, iid)
        return found if found["state"] == "unhealthy" and "OOM-killed" in (found["error"] or "") else None

    found = wait_for(oom_killed, 20, "the OOM kill to be reported", interval=0.05)
    assert "restarting in" in found["error"] or "crash loop" in found["error"]
    wait_for(lambda: instance(fleet.api, iid)["restarts"] >= 1, 10, "the agent to restart it")
    assert fleet.api.delete("/api/instance/delete", {"id": iid}).body["state"] == "released"


def test_a_container_nobody_wants_is_shown_on_its_node_then_removed_after_its_grace(
    fleet: OneNodeFleet, engine: docker.DockerClient
) -> None:
    labels = {LABEL_INSTANCE: "left-behind", LABEL_NODE: fleet.node_id, LABEL_MANAGED: "true"}
    stray = engine.containers.run(TEST_IMAGE, detach=True, labels=labels)
    try:

        def shown() -> dict[str, Any] | None:
            found = node_view(fleet.api, fleet.node_id)["unwantedContainers"]
            return next((u for u in found if u["instanceId"] == "left-behind"), None)

        # Noticed by the agent's next resync (every 2 s here), reported in the next heartbeat.
        seen = wait_for(shown, 6, "the unwanted container in the node view")
        assert seen["instanceId"] == "left-behind" and seen["containerId"] == stray.id
        assert seen["state"] == "running" and seen["removeAt"]
        # Removed once its grace (3 s) passed, at a resync; then gone from the view too.
        wait_for(lambda: not engine.containers.list(all=True, filters={"id": stray.id}), 10, "its removal")
        wait_for(lambda: not shown(), 3, "the node view to drop it")
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            stray.remove(force=True)


def test_a_container_removed_while_its_agent_was_down_is_recreated_and_reported(
    fleet: OneNodeFleet, engine: docker.DockerClient
) -> None:
    iid = deploy(fleet, fleet.ports[13], "removed-unseen")["id"]
    cid = wait_state(fleet.api, iid, "running")["ContainerId"]
    fleet.agent.stop(signal.SIGKILL)
    engine.containers.get(cid).remove(force=True)  # no agent saw it: no event will ever say so
    fleet.agent = AgentProcess(fleet.agent.data_dir, fleet.coordinator, None, **AGENT)
    fleet.agent.start()

    def recreated() -> dict[str, Any] | None:
        found = instance(fleet.api, iid)
        return found if found["state"] == "running" and found["ContainerId"] != cid else None

    # The Hello lacks it: unhealthy ("missing"), re-created from the Welcome, confirmed with its new id.
    back = wait_for(recreated, 20, "the instance running in a new container")
    assert engine.containers.get(back["ContainerId"]).labels[LABEL_INSTANCE] == iid
    wait_for(lambda: serves(fleet.ports[13]), 5, "the new container to serve")
    fleet.api.delete("/api/instance/delete", {"id": iid})


def test_last_checked_lags_by_at_most_one_interval_plus_the_batch_period(fleet: OneNodeFleet) -> None:
    """In the API (memory) and in the database row (the batch writer), sampled over a few seconds."""
    interval, batch = TEST_FLEET["heartbeat_interval_s"], TEST_FLEET["batch_period_s"]
    slack = 0.25  # scheduling on a 2-core machine running the whole suite
    worst_api = worst_db = 0.0
    for _ in range(20):
        view = node_view(fleet.api, fleet.node_id)
        worst_api = max(worst_api, view["heartbeatAgeSeconds"])
        asked = time.time()  # the query's own time (it opens the store) does not count as lag
        [(stored,)] = fleet.coordinator.query("SELECT last_checked FROM nodes WHERE id = :n", n=fleet.node_id)
        worst_db = max(worst_db, asked - stored)
        time.sleep(0.17)
    assert worst_api <= interval * 1.1 + slack, worst_api  # the agent jitters its interval by ±10%
    assert worst_db <= interval * 1.1 + batch + slack, worst_db


def restart_docker_engine(seen: list[str], fleet: OneNodeFleet, while_down: Callable[[], None]) -> None:
    """Stop the host's dockerd as its init system would (SIGTERM: it stops the containers too) and start
    it again the way `make test-env` does, noting the node's status all the while."""
    pid_file = Path("/var/run/docker.pid")
    if not pid_file.exists():
        if os.environ.get("MOORAGE_REQUIRE_DOCKER") == "1":
            pytest.fail("restarting the engine needs this host's dockerd (no /var/run/docker.pid)")
        pytest.skip("the Docker engine is not a local dockerd this test can restart")
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGTERM)

    def stopped() -> bool:
        with contextlib.suppress(psutil.NoSuchProcess):
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        return True

    def note() -> dict[str, Any]:
        view = node_view(fleet.api, fleet.node_id)
        seen.append(view["status"])
        return view

    wait_for(lambda: note() and stopped(), 60, "dockerd to stop")
    wait_for(lambda: note()["engineError"], 5, "the node to report its engine down")
    while_down()
    subprocess.run(["bash", str(REPO / "tests/env/ensure-docker.sh")], check=True, timeout=120)
    wait_for(lambda: note()["engineError"] is None, 20, "the node to report its engine back")


def test_a_docker_engine_restart_is_noticed_and_its_containers_started_again(fleet: OneNodeFleet) -> None:
    ids = [deploy(fleet, fleet.ports[14 + n], f"survivor-{n}")["id"] for n in range(2)]
    containers = [wait_state(fleet.api, iid, "running")["ContainerId"] for iid in ids]
    seen: list[str] = []

    def unhealthy_while_down() -> None:
        for iid in ids:
            found = wait_state(fleet.api, iid, "unhealthy", timeout=3)
            assert "engine" in found["error"] or "exited" in found["error"], found["error"]

    restart_docker_engine(seen, fleet, unhealthy_while_down)
    assert set(seen) == {"ready"}, "the agent kept its heartbeats while the engine was away"
    for iid, cid in zip(ids, containers, strict=True):
        back = wait_state(fleet.api, iid, "running", timeout=20)
        assert back["ContainerId"] == cid  # the same container, started again by the agent
    ports = fleet.ports[14:16]
    wait_for(lambda: all(serves(port) for port in ports), 10, "the containers to serve again")
    for iid in ids:
        fleet.api.delete("/api/instance/delete", {"id": iid})
