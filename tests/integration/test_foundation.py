"""The foundation path on real parts: a coordinator and an agent as real subprocesses (gRPC over mutual TLS,
SQLite on disk), a real Docker engine, real HTTP into the container."""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Iterator

import docker
import pytest

from bench.daemons import (
    TEST_IMAGE,
    AgentProcess,
    OneNodeFleet,
    create_node,
    instance,
    leave_no_containers,
    node_view,
    one_node_fleet,
    port_block,
    wait_for,
    wait_state,
)
from tests.dockerenv import require_docker

pytestmark = pytest.mark.docker


Fleet = OneNodeFleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_docker()
    with one_node_fleet(tmp_path_factory.mktemp("foundation"), ports=6) as found:
        yield found


def http_get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        body: bytes = resp.read()
    return body.decode()


def deploy_body(fleet: Fleet, port: int, **over: object) -> dict[str, object]:
    return {
        "image": TEST_IMAGE,
        "memory": "64",
        "cpu": "50",
        "ports": str(port),
        "nodeId": fleet.node_id,
        "name": "web",
        **over,
    }


def test_node_enrolls_and_shows_online(fleet: Fleet) -> None:
    view = node_view(fleet.api, fleet.node_id)
    assert view["status"] == "ready" and view["connected"] is True and view["enrolled"] is True
    assert view["lastChecked"] is not None and view["heartbeatAgeSeconds"] < 2
    assert view["hostMetrics"]["memoryTotalMiB"] > 0
    assert view["allocations"] == {"total": 6, "assigned": 0, "free": 6}
    # The identity is on disk: a restart of the agent needs no token.
    assert (fleet.agent.data_dir / "node.key").stat().st_mode & 0o777 == 0o600


def test_deploy_runs_a_real_container_and_delete_removes_it(fleet: Fleet) -> None:
    port = fleet.ports[0]
    r = fleet.api.post("/api/instances/deploy", deploy_body(fleet, port))
    assert r.status == 201, r.body
    assert r.body["state"] == "pending" and r.body["InternalState"] == "INSTALLING"
    assert r.body["ports"] == [port] and r.body["Ports"] == f"{port}:{port}" and r.body["Primary"] == port
    iid = r.body["id"]

    running = wait_state(fleet.api, iid, "running")
    assert running["InternalState"] == "READY" and running["deliveredAt"] is not None

    client = docker.from_env()
    try:
        attrs = client.api.inspect_container(running["ContainerId"])
    finally:
        client.close()
    host = attrs["HostConfig"]
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["CpuQuota"] == 50_000 and host["CpuPeriod"] == 100_000
    assert host["PortBindings"][f"{port}/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    assert f"{port}/udp" in host["PortBindings"]
    env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
    assert env["SERVER_PORT"] == str(port) and env["SERVER_IP"] == "127.0.0.1"
    assert attrs["Config"]["Labels"]["moorage.instance"] == iid

    assert "moorage-test-ok" in wait_for(lambda: _try_get(port), 10, "the page from inside the container")
    assert node_view(fleet.api, fleet.node_id)["allocations"]["assigned"] == 1

    r = fleet.api.delete("/api/instance/delete", {"id": iid})
    assert r.status == 201, r.body
    assert r.body["state"] == "released" and r.body["allocations"] == [] and r.body["releasedAt"]
    client = docker.from_env()
    try:
        assert client.containers.list(all=True, filters={"label": f"moorage.instance={iid}"}) == []
    finally:
        client.close()
    assert node_view(fleet.api, fleet.node_id)["allocations"]["assigned"] == 0
    # The row is kept for its history, and the port can be deployed again.
    assert instance(fleet.api, iid)["state"] == "released"
    again = fleet.api.post("/api/instances/deploy", deploy_body(fleet, port, name="web-again"))
    assert again.status == 201, again.body
    wait_state(fleet.api, again.body["id"], "running")
    assert fleet.api.delete("/api/instance/delete", {"id": again.body["id"]}).body["state"] == "released"


def _try_get(port: int) -> str | None:
    try:
        return http_get(port)
    except OSError:
        return None


def test_missing_image_turns_the_instance_to_error_and_frees_its_ports(fleet: Fleet) -> None:
    port = fleet.ports[1]
    r = fleet.api.post("/api/instances/deploy", deploy_body(fleet, port, image="moorage-test/absent:1"))
    assert r.status == 201, r.body
    failed = wait_state(fleet.api, r.body["id"], "error")
    assert failed["InternalState"] == "FAILED"
    assert "absent" in failed["error"] or "registry" in failed["error"] or "no such host" in failed["error"]
    assert failed["allocations"] == []
    assert node_view(fleet.api, fleet.node_id)["allocations"]["assigned"] == 0
    client = docker.from_env()
    try:
        assert client.containers.list(all=True, filters={"label": f"moorage.instance={r.body['id']}"}) == []
    finally:
        client.close()


def test_a_taken_host_port_fails_cleanly(fleet: Fleet) -> None:
    """The port is an allocation but something else on the host holds it: Docker refuses to start, the
    instance reports the engine's words, no container is left behind."""
    import socket

    port = fleet.ports[2]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        r = fleet.api.post("/api/instances/deploy", deploy_body(fleet, port))
        assert r.status == 201
        failed = wait_state(fleet.api, r.body["id"], "error")
    assert "address already in use" in failed["error"] or "port is already allocated" in failed["error"]
    assert failed["allocations"] == []


def test_agent_stopped_node_goes_offline_then_coordinator_restart_keeps_everything(fleet: Fleet) -> None:
    api = fleet.api
    port = fleet.ports[3]
    r = api.post("/api/instances/deploy", deploy_body(fleet, port, name="survivor"))
    iid = r.body["id"]
    before = wait_state(api, iid, "running")
    key = fleet.coordinator.admin_key

    fleet.agent.stop(signal.SIGTERM)
    # Three heartbeat intervals (0.5 s each) plus the monitor's wake-up.
    wait_for(lambda: not node_view(api, fleet.node_id)["isOnline"], 1.5 + 1.0, "the node to show offline")
    assert node_view(api, fleet.node_id)["status"] in ("heartbeat_abnormal", "offline")
    # The node's status is judged on read; its instances follow once the monitor has acted on it.
    wait_for(lambda: instance(api, iid)["state"] == "unhealthy", 2.0, "the instance to turn unhealthy")
    # The agent's exit did not stop the container.
    assert "moorage-test-ok" in http_get(port)

    fleet.coordinator.stop(signal.SIGTERM)
    fleet.coordinator.start()
    api = fleet.api
    assert api.key == key and api.get("/api/nodes").status == 200
    assert node_view(api, fleet.node_id)["name"] == "node-a"
    assert instance(api, iid)["name"] == "survivor"

    fleet.agent = AgentProcess(fleet.agent.data_dir, fleet.coordinator, None)  # no token: identity on disk
    fleet.agent.start()
    wait_for(lambda: node_view(api, fleet.node_id)["isOnline"], 20, "the node to come back")
    back = wait_state(api, iid, "running", timeout=20)
    # Re-adopted, not re-created.
    assert back["ContainerId"] == before["ContainerId"]


def test_a_node_that_may_not_pull_refuses_absent_images_up_front(fleet: Fleet) -> None:
    api = fleet.api
    ports = port_block(2)
    node = create_node(api, ports, name="no-pull")
    agent = AgentProcess(
        fleet.tmp / "agent-no-pull", fleet.coordinator, node["joinToken"], pull_policy="never"
    )
    agent.start()
    try:
        wait_for(lambda: node_view(api, node["id"])["isOnline"], 20, "the no-pull node to come online")
        body = {
            "image": "moorage-test/absent:1",
            "memory": 64,
            "cpu": 50,
            "ports": [ports[0]],
            "nodeId": node["id"],
            "name": "nope",
        }
        r = api.post("/api/instances/deploy", body)
        assert r.status == 400 and r.body["field"] == "image" and "may not pull" in r.body["error"]
        assert node_view(api, node["id"])["allocations"]["assigned"] == 0
        r = api.post("/api/instances/deploy", {**body, "image": TEST_IMAGE, "name": "yes"})
        assert r.status == 201
        wait_state(api, r.body["id"], "running")
        assert api.delete("/api/instance/delete", {"id": r.body["id"]}).body["state"] == "released"
    finally:
        agent.stop()
        leave_no_containers(node["id"])


def test_placement_through_the_region_chain_onto_a_real_agent(fleet: Fleet) -> None:
    api = fleet.api
    home = api.post("/api/regions", {"name": "Home", "identifier": "real-home", "countryId": "NL"}).body
    first = api.post(
        "/api/regions", {"name": "Empty", "identifier": "real-empty", "fallbackRegionId": home["id"]}
    ).body
    assert api.call("PATCH", f"/api/nodes/{fleet.node_id}", {"regionId": home["id"]}).status == 200
    r = api.post(
        "/api/instances/deploy",
        {"image": TEST_IMAGE, "memory": 64, "cpu": 50, "regionId": first["identifier"], "name": "placed"},
    )
    assert r.status == 201, r.body
    assert (
        r.body["placement"] == {"region": "real-home", "fallbackUsed": True}
        and r.body["nodeId"] == fleet.node_id
    )
    port = r.body["Primary"]
    wait_state(api, r.body["id"], "running")
    assert "moorage-test-ok" in wait_for(lambda: _try_get(port), 10, "the placed instance to serve")
    stats = api.get(f"/api/regions/{home['id']}").body["stats"]
    assert stats["serverCount"] >= 1 and stats["onlineNodeCount"] == 1
    assert api.delete("/api/instance/delete", {"id": r.body["id"]}).body["state"] == "released"
