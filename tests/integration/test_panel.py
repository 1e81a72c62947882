"""The panel dialect (seed 001) end to end on real parts: a coordinator and an agent as subprocesses, a real
Docker engine, real HTTP into the container. Suspension and power are desired states that hold across an
agent restart."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import docker
import pytest

from bench.daemons import (
    AgentProcess,
    Api,
    OneNodeFleet,
    node_view,
    one_node_fleet,
    wait_for,
    wait_state,
)
from tests.dockerenv import require_docker

pytestmark = pytest.mark.docker


Panel = OneNodeFleet


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Panel]:
    require_docker()
    with one_node_fleet(tmp_path_factory.mktemp("panel"), ports=3) as found:
        yield found


def page(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3) as resp:
            body: bytes = resp.read()
        return body.decode()
    except OSError:
        return None


def container_running(container_id: str) -> bool:
    client = docker.from_env()
    try:
        return bool(client.api.inspect_container(container_id)["State"]["Running"])
    finally:
        client.close()


def container_env(container_id: str) -> dict[str, str]:
    client = docker.from_env()
    try:
        env = client.api.inspect_container(container_id)["Config"]["Env"]
    finally:
        client.close()
    return dict(e.split("=", 1) for e in env)


def test_a_users_catalog_instance_through_suspend_power_and_delete(panel: Panel) -> None:
    api = panel.api
    made = api.post(
        "/api/auth/create-user",
        {"username": "gamer", "email": "gamer@example.com", "password": "s3cret-pass"},
    )
    assert made.status == 201, made.body
    user_id = made.body["userId"]
    port = panel.ports[0]
    deploy = {
        "image": "busybox-httpd",
        "memory": "64",
        "cpu": "50",
        "ports": str(port),
        "nodeId": panel.node_id,
        "name": "gamer-web",
        "user": user_id,
        "variables": {"SERVER_MOTD": "welcome gamer"},
    }
    bad = api.post("/api/instances/deploy", {**deploy, "variables": {"SERVER_MOTD": "x" * 300}})
    assert bad.status == 400 and "SERVER_MOTD" in bad.body["error"], bad.body

    r = api.post("/api/instances/deploy", deploy)
    assert r.status == 201, r.body
    iid = r.body["id"]
    running = wait_state(api, iid, "running")
    container = running["ContainerId"]
    assert container_env(container)["SERVER_MOTD"] == "welcome gamer"
    assert "moorage-test-ok" in wait_for(lambda: page(port), 10, "the page")

    listed = api.post("/api/getUserInstance", {"userId": user_id})
    assert listed.status == 200 and [i["id"] for i in listed.body] == [iid]
    assert api.post("/api/getUserInstance", {"userId": "nobody"}).status == 400
    assert api.post("/api/getUserInstance", {}).status == 400

    # The owner may power it but not lift a suspension.
    login = api.post("/api/auth/login", {"username": "gamer", "password": "s3cret-pass"}, key=False)
    owner = Api(api.url, None, {"Authorization": f"Bearer {login.body['token']}"})
    assert owner.post(f"/api/instances/suspend/{iid}").status == 403

    suspended = api.post(f"/api/instances/suspend/{iid}")
    assert suspended.status == 200, suspended.body
    assert suspended.body["suspended"] is True and suspended.body["state"] == "suspended"
    wait_for(lambda: not container_running(container), 15, "the suspended container to stop")
    refused = owner.post(f"/api/instances/{iid}/power", {"action": "start"})
    assert refused.status == 409 and "suspended" in refused.body["error"], refused.body
    assert api.post(f"/api/instances/{iid}/power", {"action": "restart"}).status == 409
    assert owner.post(f"/api/instances/unsuspend/{iid}").status == 403

    # A suspension is the instance's desired state: restarting both daemons does not start it again.
    panel.agent.stop()
    panel.coordinator.stop()
    panel.coordinator.start()
    api = panel.api
    owner = Api(api.url, None, owner.headers)
    panel.agent = AgentProcess(panel.agent.data_dir, panel.coordinator, None)  # identity on disk
    panel.agent.start()
    wait_for(lambda: node_view(api, panel.node_id)["status"] == "ready", 20, "the agent to reconnect")
    assert not container_running(container)
    assert api.post("/api/getInstance", {"id": iid}).body["state"] == "suspended"

    back = api.post(f"/api/instances/unsuspend/{iid}")
    assert back.status == 200 and back.body["suspended"] is False, back.body
    wait_state(api, iid, "running")
    assert "moorage-test-ok" in wait_for(lambda: page(port), 10, "the page after unsuspend")

    stopped = owner.post(f"/api/instances/{iid}/power", {"action": "stop"})
    assert stopped.status == 200 and stopped.body["state"] == "stopped", stopped.body
    assert not container_running(container)
    assert owner.post(f"/api/instances/{iid}/power", {"action": "stop"}).body["state"] == "stopped"
    assert owner.post(f"/api/instances/{iid}/power", {"action": "start"}).status == 200
    wait_state(api, iid, "running")
    assert owner.post(f"/api/instances/{iid}/power", {"action": "restart"}).status == 200
    wait_state(api, iid, "running")
    assert "moorage-test-ok" in wait_for(lambda: page(port), 10, "the page after restart")
    killed = owner.post(f"/api/instances/{iid}/power", {"action": "kill"})
    assert killed.status == 200 and killed.body["state"] == "stopped"
    assert owner.post(f"/api/instances/{iid}/power", {"action": "explode"}).status == 400

    # The node holds a live instance: deleting it needs force.
    kept = api.delete("/api/nodes/delete", {"nodeId": panel.node_id})
    assert kept.status == 400, kept.body

    gone = api.delete("/api/instance/delete", {"id": iid})
    assert gone.status == 201 and gone.body["state"] == "released", gone.body
    assert owner.post(f"/api/instances/{iid}/power", {"action": "start"}).status == 409
