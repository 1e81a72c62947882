"""Real faults, one side at a time, as an operator meets them: the coordinator killed or stopped and started
again on the same addresses while its agent keeps running (never restarted to make a test pass), an agent
restarted while its coordinator is away, and deploys that fail on the host and are then released. Real
coordinator and agent subprocesses, a real Docker engine, fixed ports."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from bench.daemons import (
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

#: The agent's reconnect back-off cap here (full jitter below it), and its resync interval.
RECONNECT_MAX_S = 2.0
RESYNC_S = 2.0
AGENT: dict[str, Any] = {
    "reconnect_initial_s": 0.2,
    "reconnect_max_s": RECONNECT_MAX_S,
    "resync_interval_s": RESYNC_S,
    "unknown_container_grace_s": 3.0,
    "restart": {"initial_delay_s": 0.5, "max_delay_s": 2.0, "reset_after_s": 30.0, "crash_loop_after": 5},
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneNodeFleet]:
    require_docker()
    with one_node_fleet(tmp_path_factory.mktemp("faults"), ports=16, **AGENT) as found:
        yield found


@pytest.fixture
def agent_pid(fleet: OneNodeFleet) -> Iterator[int]:
    """The agent process every test starts with; it must be the same, alive, at the end."""
    assert fleet.agent.proc is not None and fleet.agent.running
    pid = fleet.agent.proc.pid
    yield pid
    if fleet.agent.proc is not None and fleet.agent.proc.pid == pid:
        assert fleet.agent.running, f"the agent died:\n{fleet.agent.log()}"


def answers(port: int) -> bool:
    """Whether anything accepts a TCP connection on the port."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def deploy(fleet: OneNodeFleet, name: str, port: int, **overrides: Any) -> dict[str, Any]:
    body = {"image": TEST_IMAGE, "memory": 32, "cpu": 5, "nodeId": fleet.node_id, "name": name}
    r = fleet.api.post("/api/instances/deploy", {**body, "ports": [port], **overrides})
    assert r.status == 201, r.body
    found: dict[str, Any] = r.body
    return found


def containers_of(engine: docker.DockerClient, fleet: OneNodeFleet) -> list[Any]:
    return list(engine.containers.list(all=True, filters={"label": f"moorage.node={fleet.node_id}"}))


def started(engine: docker.DockerClient, container_id: str) -> tuple[str, str]:
    """(container id, StartedAt): both the same means the container was neither re-created nor restarted."""
    state = engine.api.inspect_container(container_id)["State"]
    return container_id, str(state["StartedAt"])


def bound_ports(engine: docker.DockerClient, fleet: OneNodeFleet) -> collections.Counter[int]:
    """Host ports the node's running containers publish (TCP), as the engine has them."""
    ports: collections.Counter[int] = collections.Counter()
    for c in containers_of(engine, fleet):
        c.reload()
        if c.status != "running":
            continue
        for proto, bindings in (c.attrs["NetworkSettings"]["Ports"] or {}).items():
            if proto.endswith("/tcp"):
                ports.update({int(b["HostPort"]) for b in bindings or []})
    return ports


def delete(fleet: OneNodeFleet, iid: str) -> dict[str, Any]:
    r = fleet.api.delete("/api/instance/delete", {"id": iid})
    assert r.status == 201, r.body  # Skyport answers a delete with 201
    found: dict[str, Any] = r.body
    return found


def test_a_coordinator_killed_in_a_burst_of_deploys_is_outlived_by_its_agent(
    fleet: OneNodeFleet, engine: docker.DockerClient, agent_pid: int
) -> None:
    api = fleet.api
    answered: list[str] = []

    def one(n: int) -> None:
        try:
            r = api.post(
                "/api/instances/deploy",
                {"image": TEST_IMAGE, "memory": 16, "cpu": 5, "nodeId": fleet.node_id, "name": f"burst-{n}"}
                | {"ports": [fleet.ports[n]]},
            )
        except OSError:
            return  # the coordinator died under this request: it may or may not have been accepted
        if r.status == 201:
            answered.append(r.body["id"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for n in range(8):
            pool.submit(one, n)
        wait_for(lambda: len(answered) >= 2, 10, "the first deploys to be accepted", interval=0.005)
        fleet.coordinator.stop(signal.SIGKILL)
    time.sleep(3)
    assert fleet.agent.running, f"the agent died with its coordinator:\n{fleet.agent.log()}"
    fleet.coordinator.start()
    api = fleet.api

    burst = {i["id"]: i for i in api.get("/api/instances").body if i["name"].startswith("burst-")}
    assert set(answered) <= set(burst), "an accepted deploy was lost"

    def settled(iid: str) -> dict[str, Any] | None:
        found = instance(api, iid)
        return found if found["state"] in ("running", "error") else None

    for iid in burst:  # none is left pending, created or starting
        final = wait_for(functools.partial(settled, iid), 30, f"{iid} to end running or failed")
        if final["state"] == "error":
            assert final["error"], final
        else:
            port = final["allocations"][0]["port"]
            assert wait_for(functools.partial(serves, port), 10, f"{final['name']} serving on {port}")
    live = [i for i in api.get("/api/instances").body if i["state"] not in ("released", "error")]
    held = collections.Counter(a["port"] for i in live for a in i["allocations"])
    assert held == bound_ports(engine, fleet), "the ports held in the database are the ports bound"
    per_instance = collections.Counter(c.labels["moorage.instance"] for c in containers_of(engine, fleet))
    assert per_instance == collections.Counter(i["id"] for i in live), "one container per live instance"
    assert node_view(api, fleet.node_id)["allocations"]["assigned"] == sum(held.values())
    for iid in burst:
        delete(fleet, iid)


def test_a_coordinator_away_longer_than_the_back_off_cap_finds_everything_as_it_was(
    fleet: OneNodeFleet, engine: docker.DockerClient, agent_pid: int
) -> None:
    api = fleet.api
    ids = [deploy(fleet, f"steady-{n}", fleet.ports[8 + n])["id"] for n in range(2)]
    before = {iid: started(engine, wait_state(api, iid, "running")["ContainerId"]) for iid in ids}

    fleet.coordinator.stop(signal.SIGTERM)
    time.sleep(60)  # thirty times the back-off cap: the agent keeps retrying, the containers keep running
    assert fleet.agent.running, f"the agent gave up on its coordinator:\n{fleet.agent.log()}"
    assert all(serves(fleet.ports[8 + n]) for n in range(2))
    fleet.coordinator.start()
    back_at = time.monotonic()
    wait_for(lambda: node_view(fleet.api, fleet.node_id)["isOnline"], 30, "the agent to reconnect")
    # Within one back-off step (jitter keeps it under the cap), plus a heartbeat and the TLS handshake.
    assert time.monotonic() - back_at <= RECONNECT_MAX_S + 1.5
    for iid in ids:
        now = wait_state(fleet.api, iid, "running", timeout=10)
        assert started(engine, now["ContainerId"]) == before[iid], "re-created or restarted"
    for iid in ids:
        delete(fleet, iid)


def test_a_released_deploy_that_failed_on_a_busy_port_never_comes_back(
    fleet: OneNodeFleet, engine: docker.DockerClient, agent_pid: int
) -> None:
    port = fleet.ports[10]
    squatter = socket.create_server(("127.0.0.1", port))  # something else on the host holds the port
    try:
        iid = deploy(fleet, "squatted", port)["id"]
        failed = wait_state(fleet.api, iid, "error", timeout=20)
        assert failed["error"] and str(port) in failed["error"], failed
        assert delete(fleet, iid)["state"] == "released"
    finally:
        squatter.close()
    assert not answers(port)
    time.sleep(2 * RESYNC_S + 1)  # two resyncs, and several of the old retry's back-off steps
    assert [c.id for c in containers_of(engine, fleet) if c.labels["moorage.instance"] == iid] == []
    assert not answers(port), "the released instance came back and took its old port"
    assert instance(fleet.api, iid)["state"] == "released"
    # The port is the coordinator's to give again, and the next instance gets it.
    again = deploy(fleet, "next-on-the-port", port)["id"]
    wait_state(fleet.api, again, "running")
    assert wait_for(lambda: serves(port), 10, "the new instance on the freed port")
    delete(fleet, again)


def test_a_released_deploy_the_engine_refused_is_not_retried(
    fleet: OneNodeFleet, engine: docker.DockerClient, agent_pid: int
) -> None:
    # 1 MiB: Docker refuses any memory limit under 6 MB.
    iid = deploy(fleet, "too-small", fleet.ports[11], memory=1)["id"]
    failed = wait_state(fleet.api, iid, "error", timeout=20)
    assert "memory" in failed["error"].lower(), failed
    assert delete(fleet, iid)["state"] == "released"

    def attempts() -> int:
        """Failed attempts at the instance the agent logged."""
        return sum(iid in line and "failed" in line for line in fleet.agent.log(10**7).splitlines())

    tried = attempts()
    time.sleep(2 * RESYNC_S + 1)
    assert attempts() == tried, "the agent still retries an instance nobody wants"
    assert [c.id for c in containers_of(engine, fleet) if c.labels["moorage.instance"] == iid] == []


def test_an_agent_restarted_while_its_coordinator_is_away_restarts_nothing(
    fleet: OneNodeFleet, engine: docker.DockerClient
) -> None:
    ids = [deploy(fleet, f"kept-{n}", fleet.ports[12 + n])["id"] for n in range(2)]
    before = {iid: started(engine, wait_state(fleet.api, iid, "running")["ContainerId"]) for iid in ids}

    fleet.coordinator.stop(signal.SIGTERM)
    fleet.agent.stop(signal.SIGTERM)
    fleet.agent = AgentProcess(fleet.agent.data_dir, fleet.coordinator, None, **AGENT)
    fleet.agent.start()
    # Longer than its resync interval and its grace for unwanted containers: with no Welcome yet, the
    # agent does not know what is wanted, so it removes nothing.
    time.sleep(2 * RESYNC_S + 3.0)
    assert fleet.agent.running, fleet.agent.log()
    fleet.coordinator.start()
    wait_for(lambda: node_view(fleet.api, fleet.node_id)["isOnline"], 20, "the agent to connect")
    for iid in ids:
        now = wait_state(fleet.api, iid, "running", timeout=10)
        assert started(engine, now["ContainerId"]) == before[iid], "re-created or restarted"
        assert serves(now["allocations"][0]["port"])
    for iid in ids:
        delete(fleet, iid)
