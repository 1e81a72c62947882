"""The fleet view stays true through real faults: a real coordinator and agent as subprocesses, a real
Docker engine, real signals. Crashed containers, restarted agents, silent nodes."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.daemons import (
    AgentProcess,
    OneNodeFleet,
    instance,
    node_view,
    one_node_fleet,
    wait_for,
    wait_state,
)
from tests.dockerenv import TEST_IMAGE, require_docker

pytestmark = pytest.mark.docker

#: The agent's crash back-off in these tests: quick, and a loop after three crashes in a row.
RESTART = {"initial_delay_s": 0.5, "max_delay_s": 2.0, "reset_after_s": 30.0, "crash_loop_after": 3}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneNodeFleet]:
    require_docker()
    with one_node_fleet(tmp_path_factory.mktemp("truth"), ports=12, restart=RESTART) as found:
        yield found


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


def serves(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return b"moorage-test-ok" in resp.read()
    except OSError:
        return False


def deploy(fleet: OneNodeFleet, port: int, name: str, image: str = TEST_IMAGE) -> dict[str, Any]:
    r = fleet.api.post(
        "/api/instances/deploy",
        {"image": image, "memory": 64, "cpu": 10, "ports": [port], "nodeId": fleet.node_id, "name": name},
    )
    assert r.status == 201, r.body
    found: dict[str, Any] = r.body
    return found


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
    fleet.agent = AgentProcess(fleet.agent.data_dir, fleet.coordinator, None, restart=RESTART)
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
    # Grace: 3 intervals of 0.5 s; offline after 4 s (tests/daemons.py TEST_FLEET), plus the monitor's wake.
    wait_for(lambda: node_view(api, fleet.node_id)["status"] == "heartbeat_abnormal", 1.5 + 1.0, "abnormal")
    wait_for(lambda: instance(api, iid)["state"] == "unhealthy", 2.0, "its instance to turn unhealthy")
    assert "stopped sending heartbeats" in instance(api, iid)["error"]
    wait_for(lambda: node_view(api, fleet.node_id)["status"] == "offline", 4.0 + 1.0, "offline")
    assert serves(port)  # nobody touched the container meanwhile

    fleet.agent = AgentProcess(fleet.agent.data_dir, fleet.coordinator, None, restart=RESTART)
    fleet.agent.start()
    wait_for(lambda: node_view(api, fleet.node_id)["status"] == "ready", 20, "ready again")
    back = wait_state(api, iid, "running", timeout=10)
    assert back["ContainerId"] == cid and container_state(engine, cid)["StartedAt"] == started
