"""The vpn dialect on real parts: a coordinator and two agents (regions eu/DE and us/US) as subprocesses on
this host's Docker engine. Ready (19) comes only from heartbeats and turns Heartbeat Abnormal (18) when the
agent stops; traffic shows in bandwidth_used_m; an 8 Mbps cap holds within 10% on a real download; a
redeploy to another country moves the endpoint to that region's node and releases the old one."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from bench.daemons import TEST_FLEET, Api, wait_for
from tests.dockerenv import require_docker, serves
from tests.integration.sized_fleet import SizedFleet, sized_fleet

pytestmark = pytest.mark.docker

INTERVAL = TEST_FLEET["heartbeat_interval_s"]
GRACE = INTERVAL * TEST_FLEET["grace_intervals"]
CAP_MBPS = 8
PAYLOAD_MIB = 6


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SizedFleet]:
    require_docker()
    with sized_fleet(tmp_path_factory.mktemp("vpn-docker"), eu_limit=10, docker=("eu", "us")) as w:
        yield w


@pytest.fixture(scope="module")
def user(world: SizedFleet) -> Api:
    return world.user("vic")[0]


def node(api: Api, number: int) -> dict[str, Any]:
    r = api.get(f"/api/v2/nodes/{number}/")
    assert r.status == 200, r.body
    found: dict[str, Any] = r.body["data"]
    return found


def deploy(api: Api, name: str) -> int:
    body = {"image": "busybox-httpd", "memory": 64, "cpu": 10, "name": name, "regionId": "eu"}
    r = api.post("/api/instances/deploy", {**body, "bandwidth": CAP_MBPS})
    assert r.status == 201, r.body
    listed = api.get("/api/v2/nodes/?page_size=100").body["data"]["results"]
    return int(next(n["id"] for n in listed if n["name"] == name))


def container(container_id: str) -> Any:
    client = docker.from_env()
    try:
        return client.containers.get(container_id)
    finally:
        client.close()


def gone(container_id: str) -> bool:
    try:
        container(container_id)
    except docker.errors.NotFound:
        return True
    return False


def test_ready_only_from_heartbeats_and_abnormal_without_them(world: SizedFleet, user: Api) -> None:
    number = deploy(user, "vpn-hb")
    seen: list[int] = []

    def ready() -> bool:
        seen.append(node(user, number)["status"])
        return seen[-1] == 19

    wait_for(ready, 30, "Ready", interval=0.02)
    assert set(seen[:-1]) <= {-10, 9, 10}, seen
    agent = world.agents[0]
    agent.stop()
    stopped = time.monotonic()
    try:
        abnormal = wait_for(lambda: (n := node(user, number))["status"] == 18 and n, 10, "Heartbeat Abnormal")
        took = time.monotonic() - stopped
        assert took <= GRACE + 3 * INTERVAL + 0.5, took  # the grace, the monitor's tick, one more beat
        assert abnormal["status_display"] == "Heartbeat Abnormal"
        # Nothing but a heartbeat makes it Ready again.
        for _ in range(5):
            time.sleep(INTERVAL)
            assert node(user, number)["status"] == 18
    finally:
        agent.start()
    wait_for(lambda: node(user, number)["status"] == 19, 20, "Ready again after the agent's heartbeats")


def test_traffic_is_measured_and_the_cap_holds(user: Api) -> None:
    number = deploy(user, "vpn-cap")
    ready = wait_for(lambda: (n := node(user, number))["status"] == 19 and n, 30, "Ready")
    assert ready["bandwidth"] == float(CAP_MBPS) and ready["info"] is None, ready
    box = container(ready["instance_id"])
    code, _ = box.exec_run(
        ["sh", "-c", f"dd if=/dev/urandom of=/www/big bs=1M count={PAYLOAD_MIB} 2>/dev/null"]
    )
    assert code == 0
    result: dict[str, float] = {}

    def download() -> None:
        """The steady rate: from the first 512 KiB on (TCP's start and the bucket's burst left out)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{ready['port']}/big", timeout=60) as resp:
            head = len(resp.read(512 * 1024))
            started = time.monotonic()
            rest = sum(len(chunk) for chunk in iter(lambda: resp.read(64 * 1024), b""))
        assert head + rest == PAYLOAD_MIB * 1024 * 1024
        result["mbps"] = rest * 8 / (time.monotonic() - started) / 1e6

    thread = threading.Thread(target=download)
    began = time.monotonic()
    thread.start()
    busy = wait_for(lambda: (n := node(user, number))["bandwidth_used_m"] >= 1 and n, 10, "traffic measured")
    assert time.monotonic() - began <= 3 * INTERVAL + 1.0  # two heartbeats, and one of slack
    assert busy["can_redeploy"] is False  # busy endpoints are not moved
    samples: list[float] = []
    while thread.is_alive() and len(samples) < 6:
        time.sleep(INTERVAL)
        samples.append(node(user, number)["bandwidth_used_m"])
    thread.join()
    peak = max(samples, default=busy["bandwidth_used_m"])
    assert abs(result["mbps"] - CAP_MBPS) <= CAP_MBPS * 0.1, result
    assert peak <= CAP_MBPS * 1.2, peak


def test_redeploy_moves_it_to_the_other_country(world: SizedFleet, user: Api) -> None:
    number = deploy(user, "vpn-move")
    old = wait_for(lambda: (n := node(user, number))["status"] == 19 and n, 30, "Ready")
    r = user.post(f"/api/v2/nodes/{number}/redeploy/", {"country_code": "US"})
    assert r.status == 200, r.body
    new_id = r.body["new_node"]["id"]
    moved = wait_for(lambda: (n := node(user, new_id))["status"] == 19 and n, 30, "the new one Ready")
    assert moved["server"]["id"] == world.nodes["us"]["id"] and moved["country"] == "us"
    assert moved["bandwidth"] == float(CAP_MBPS) and moved["name"] == "vpn-move"
    # Running is what the engine says the moment it started the container; httpd listens a moment later.
    wait_for(lambda: serves(moved["port"]), 10, "the page served")
    with urllib.request.urlopen(f"http://127.0.0.1:{moved['port']}/", timeout=5) as page:
        assert page.read() == b"moorage-test-ok\n"
    wait_for(lambda: node(user, number)["status"] == 21, 30, "the original released")
    wait_for(lambda: gone(old["instance_id"]), 15, "the original's container removed")
