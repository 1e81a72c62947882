"""The panel dialect's contract (seed 001), endpoint by endpoint: request and response fields, the success
codes as the document writes them (201 for getUser, create-user, deploy and both deletes) and every error
it lists. A real coordinator process and real agent code over an in-memory runtime (bench/fakeagent.py),
so instances reach running without Docker; the Docker path is proven in test_panel.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.daemons import (
    Api,
    CoordinatorProcess,
    FakeAgents,
    create_node,
    port_block,
    running_coordinator,
    wait_for,
    wait_state,
)

USER_FIELDS = {"userId", "username", "email", "admin", "organizationId", "createdAt"}
INSTANCE_FIELDS = {
    "Id", "Name", "User", "Node", "VolumeId", "Disk", "ports",
    "id", "name", "nodeId", "userId", "organizationId", "Image", "image", "Memory", "Cpu", "Ports", "Primary",
    "Variables", "ContainerId", "InternalState", "suspended", "state", "error", "allocations", "createdAt",
    "updatedAt", "stateChangedAt", "deliveredAt", "releasedAt", "regionId", "network", "restarts",
    "placement",
}  # fmt: skip
NODE_FIELDS = {
    "id", "name", "tags", "ram", "disk", "processor", "cpus", "address", "port", "regionId", "organizationId",
    "status", "isOnline", "connected", "lastChecked", "heartbeatAgeSeconds", "enrolled", "agentVersion",
    "hostMetrics", "allocations", "used", "overallocation", "maintenance", "unwantedContainers",
    "engineError", "createdAt",
}  # fmt: skip
MISSING = "00000000-0000-0000-0000-000000000000"


class Panel:
    def __init__(self, coordinator: CoordinatorProcess, node: dict[str, Any]) -> None:
        self.admin = coordinator.api()
        self.node = node
        r = self.admin.post(
            "/api/auth/create-user",
            {"username": "carol", "email": "carol@example.com", "password": "correct horse"},
        )
        assert r.status == 201, r.body
        self.carol_id: str = r.body["userId"]
        key = self.admin.post(
            "/api/auth/login", {"username": "carol", "password": "correct horse"}, key=False
        )
        self.carol = Api(self.admin.url, None, headers={"Authorization": f"Bearer {key.body['token']}"})

    def deploy(self, api: Api | None = None, **over: Any) -> dict[str, Any]:
        body = {"image": "moorage-test/busybox:latest", "memory": "64", "cpu": "10", "name": "c",
                "nodeId": self.node["id"], **over}  # fmt: skip
        r = (api or self.admin).post("/api/instances/deploy", body)
        assert r.status == 201, r.body
        found: dict[str, Any] = r.body
        return found


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory, coordinator_storage: dict[str, Any]) -> Iterator[Panel]:
    tmp: Path = tmp_path_factory.mktemp("contract")
    with running_coordinator(tmp / "coordinator", extra=coordinator_storage) as coordinator:
        api = coordinator.api()
        node = create_node(api, port_block(12), name="contract-node")
        agents = FakeAgents(tmp / "agents", coordinator, [node["joinToken"]])
        agents.start()
        try:
            wait_for(lambda: api.get("/api/nodes").body[0]["isOnline"], 30, "the fake agent's node Ready")
            yield Panel(coordinator, node)
        finally:
            agents.stop()


def error(r: Any, status: int, field: str | None = None) -> str:
    """The error shape every panel route answers: {"error": message[, "field": name]}."""
    assert r.status == status, (r.status, r.body)
    assert set(r.body) <= {"error", "field"} and r.body["error"]
    if field is not None:
        assert r.body.get("field") == field, r.body
    message: str = r.body["error"]
    return message


def test_get_users(panel: Panel) -> None:
    r = panel.admin.get("/api/users")
    assert r.status == 200 and {u["username"] for u in r.body} >= {"carol"}
    assert all(set(u) == USER_FIELDS for u in r.body)  # never a password or its hash
    assert [u["username"] for u in panel.carol.get("/api/users").body] == ["carol"]  # her organization


def test_get_user(panel: Panel) -> None:
    for kind, value in (("username", "carol"), ("email", "carol@example.com")):
        r = panel.admin.post("/api/getUser", {"type": kind, "value": value})
        assert r.status == 201 and set(r.body) == USER_FIELDS and r.body["userId"] == panel.carol_id
    error(panel.admin.post("/api/getUser", {"type": "phone", "value": "1"}), 400, "type")
    error(panel.admin.post("/api/getUser", {"type": "email"}), 400, "value")
    error(panel.admin.post("/api/getUser", {"value": "carol"}), 400, "type")
    error(panel.admin.post("/api/getUser", {"type": "username", "value": "nobody"}), 404)


def test_create_user(panel: Panel) -> None:
    body = {"username": "dave", "email": "dave@example.com", "password": "correct horse", "admin": False}
    r = panel.admin.post("/api/auth/create-user", body)
    assert r.status == 201 and set(r.body) == {"userId", "username", "email", "admin"}
    assert r.body["username"] == "dave" and r.body["admin"] is False and r.body["userId"]
    for field in ("username", "email", "password"):
        error(
            panel.admin.post("/api/auth/create-user", {k: v for k, v in body.items() if k != field}),
            400,
            field,
        )
    error(panel.admin.post("/api/auth/create-user", {**body, "username": "x y", "email": "e@x.io"}), 400)
    error(
        panel.admin.post("/api/auth/create-user", {**body, "username": "eve", "email": "nope"}), 400, "email"
    )
    error(panel.admin.post("/api/auth/create-user", {**body, "username": "eve", "email": "e@x.io",
                                                     "password": "short"}), 400, "password")  # fmt: skip
    error(panel.admin.post("/api/auth/create-user", {**body, "email": "other@example.com"}), 409, "username")
    error(panel.admin.post("/api/auth/create-user", {**body, "username": "dave2"}), 409, "email")
    error(panel.carol.post("/api/auth/create-user", {**body, "username": "f", "email": "f@x.io"}), 403)
    assert "f" not in {u["username"] for u in panel.admin.get("/api/users").body}


def test_deploy_and_get_instance(panel: Panel) -> None:
    port = panel.node["allocationList"][0]["port"]
    r = panel.admin.post(
        "/api/instances/deploy",
        {"image": "moorage-test/busybox:latest", "memory": "64", "cpu": "50", "ports": str(port),
         "nodeId": panel.node["id"], "name": "web", "user": panel.carol_id, "primary": str(port),
         "variables": '{"GREETING": "hi"}'},
    )  # fmt: skip
    assert r.status == 201 and set(r.body) == INSTANCE_FIELDS
    made = r.body
    assert (made["userId"], made["Memory"], made["Cpu"], made["ports"], made["Primary"]) == (
        panel.carol_id, 64, 50, [port], port,
    )  # fmt: skip
    # Skyport's own record beside ours: its ids, owner, node (no secrets) and "container:host" ports.
    assert (made["Id"], made["Name"], made["User"], made["VolumeId"]) == (made["id"], "web", panel.carol_id,
                                                                          made["id"])  # fmt: skip
    assert made["Ports"] == f"{port}:{port}" and made["Disk"] == 0
    assert made["Node"]["id"] == panel.node["id"] and made["Node"]["status"] == "Online"
    assert set(made["Node"]) == {
        "id",
        "name",
        "tags",
        "ram",
        "disk",
        "processor",
        "address",
        "port",
        "status",
    }
    assert made["Variables"] == {"GREETING": "hi"} and made["InternalState"] == "INSTALLING"
    running = wait_state(panel.admin, made["id"], "running", timeout=20)
    assert running["InternalState"] == "READY" and running["ContainerId"]
    r = panel.carol.post("/api/getInstance", {"id": made["id"]})
    assert r.status == 200 and set(r.body) == INSTANCE_FIELDS and r.body["placement"] is None
    error(panel.admin.post("/api/getInstance", {}), 400, "id")
    error(panel.admin.post("/api/getInstance", {"id": MISSING}), 400, "id")
    for field in ("image", "memory", "cpu", "name"):
        body = {"image": "moorage-test/busybox:latest", "memory": 64, "cpu": 50, "name": "n", "nodeId": "x"}
        del body[field]
        error(panel.admin.post("/api/instances/deploy", body), 400, field)


def test_list_instances(panel: Panel) -> None:
    mine = panel.deploy(panel.carol, name="listed")
    admins = panel.deploy(name="admins-own")
    every = panel.admin.get("/api/instances")
    assert every.status == 200 and all(set(i) == INSTANCE_FIELDS for i in every.body)
    assert {mine["id"], admins["id"]} <= {i["id"] for i in every.body}
    carols = {i["id"] for i in panel.carol.get("/api/instances").body}
    assert mine["id"] in carols and admins["id"] not in carols


def test_get_user_instance(panel: Panel) -> None:
    mine = panel.deploy(panel.carol, name="owned")
    r = panel.admin.post("/api/getUserInstance", {"userId": panel.carol_id})
    assert r.status == 200 and mine["id"] in {i["id"] for i in r.body}
    assert all(i["userId"] == panel.carol_id and set(i) == INSTANCE_FIELDS for i in r.body)
    error(panel.admin.post("/api/getUserInstance", {}), 400, "userId")
    error(panel.admin.post("/api/getUserInstance", {"userId": "nobody"}), 400, "userId")


def test_released_instances_are_listed_only_when_asked_for(panel: Panel) -> None:
    """Skyport forgot a deleted instance; dashboards add up what getUserInstance lists."""
    gone = panel.deploy(panel.carol, name="deleted-one")
    panel.carol.delete("/api/instance/delete", {"id": gone["id"]})
    wait_state(panel.admin, gone["id"], "released", timeout=20)
    for listed in (
        panel.admin.post("/api/getUserInstance", {"userId": panel.carol_id}).body,
        panel.carol.get("/api/instances").body,
    ):
        assert gone["id"] not in {i["id"] for i in listed}
    history = panel.admin.post("/api/getUserInstance?released=true", {"userId": panel.carol_id}).body
    assert gone["id"] in {i["id"] for i in history}
    assert gone["id"] in {i["id"] for i in panel.carol.get("/api/instances?released=true").body}
    assert panel.carol.post("/api/getInstance", {"id": gone["id"]}).body["state"] == "released"


def test_deploy_takes_what_skyport_clients_send(panel: Panel) -> None:
    """Ports as "c:h" pairs (one, several, a list), primary as "h" or "c:h", sizes with units, and
    imagename naming the catalog entry whose defaults apply."""
    a, b, c = (x["port"] for x in panel.node["allocationList"][8:11])
    made = panel.deploy(ports=f"{a}:{a},{b}:{b}", primary=f"{b}:{b}", memory="512MB", disk="1G", cpu="25%")
    # The primary first, then the others.
    assert (made["ports"], made["Primary"], made["Ports"]) == ([b, a], b, f"{b}:{b},{a}:{a}")
    assert (made["Memory"], made["Disk"], made["Cpu"]) == (512, 1024, 25)
    listed = panel.deploy(ports=[f"{c}:{c}"], primary=str(c), memory=64, imagename="busybox-httpd",
                          image="moorage-test/busybox:latest")  # fmt: skip
    assert listed["ports"] == [c] and listed["Variables"]["SERVER_MOTD"] == "hello"  # the entry's default
    for iid in (made["id"], listed["id"]):
        panel.admin.delete("/api/instance/delete", {"id": iid})


@pytest.mark.parametrize(
    ("over", "field", "says"),
    [
        ({"ports": "34005:34006"}, "ports", "differs from host port"),
        ({"ports": "abc"}, "ports", "container:host"),
        ({"ports": "1:2:3"}, "ports", "container:host"),
        ({"primary": "34005:34006"}, "primary", "differs"),
        ({"memory": "512TB"}, "memory", "unknown unit"),
        ({"memory": "1.5G"}, "memory", "whole number"),
        ({"disk": "10XB"}, "disk", "unknown unit"),
        ({"cpu": "lots"}, "cpu", "percentage"),
        ({"imagename": "not-in-the-catalog"}, "imagename", "not in the image catalog"),
        ({"imagename": "busybox-httpd", "image": "Not A Reference"}, "image", "not a Docker reference"),
    ],
)
def test_bad_skyport_input_is_refused_naming_the_field_and_leaves_nothing(
    panel: Panel, over: dict[str, Any], field: str, says: str
) -> None:
    before = panel.admin.get("/api/instances?released=true").body
    body = {"image": "moorage-test/busybox:latest", "memory": "64", "cpu": "10", "name": "bad",
            "nodeId": panel.node["id"], **over}  # fmt: skip
    assert says in error(panel.admin.post("/api/instances/deploy", body), 400, field)
    assert panel.admin.get("/api/instances?released=true").body == before  # no row, no allocation claimed


def test_the_base_url_answers_for_dashboards_that_check_it(panel: Panel) -> None:
    r = panel.admin.get("/", key=False)
    assert r.status == 200 and r.body["name"] == "Moorage" and "panel" in r.body["dialects"]


def test_a_node_described_by_its_processor_gets_its_cores_from_the_agent(panel: Panel) -> None:
    body = {"name": "described", "tags": "x", "ram": "16GB", "disk": "200GB",
            "processor": "AMD Ryzen 9 5950X", "address": "10.0.0.9", "port": 8080}  # fmt: skip
    r = panel.admin.post("/api/nodes/create", body)
    assert r.status == 201, r.body
    assert (r.body["processor"], r.body["cpus"], r.body["ram"], r.body["disk"]) == (
        "AMD Ryzen 9 5950X", 0, 16384, 204800,
    )  # fmt: skip
    # An integer there is the cores, as before.
    counted = panel.admin.post("/api/nodes/create", {**body, "name": "counted", "processor": "8"}).body
    assert (counted["processor"], counted["cpus"]) == ("8", 8)
    for bad in (0, -1, "", "x" * 201, True):
        error(panel.admin.post("/api/nodes/create", {**body, "processor": bad}), 400, "processor")
    for made in (r.body, counted):
        assert panel.admin.delete("/api/nodes/delete", {"nodeId": made["id"]}).status == 201


def test_suspend_and_unsuspend(panel: Panel) -> None:
    inst = panel.deploy(panel.carol, name="billing")
    wait_state(panel.admin, inst["id"], "running", timeout=20)
    r = panel.admin.post(f"/api/instances/suspend/{inst['id']}")
    assert r.status == 200 and r.body["suspended"] is True and r.body["state"] == "suspended"
    assert r.body["InternalState"] == "READY"
    assert "suspended" in error(
        panel.carol.post(f"/api/instances/{inst['id']}/power", {"action": "start"}), 409
    )
    error(panel.carol.post(f"/api/instances/unsuspend/{inst['id']}"), 403)
    r = panel.admin.post(f"/api/instances/unsuspend/{inst['id']}")
    assert r.status == 200 and r.body["suspended"] is False
    wait_state(panel.admin, inst["id"], "running", timeout=20)
    error(panel.admin.post(f"/api/instances/suspend/{MISSING}"), 400, "id")
    error(panel.admin.post(f"/api/instances/unsuspend/{MISSING}"), 400, "id")
    error(panel.carol.post(f"/api/instances/suspend/{inst['id']}"), 403)


def test_power(panel: Panel) -> None:
    inst = panel.deploy(panel.carol, name="power")
    wait_state(panel.admin, inst["id"], "running", timeout=20)
    r = panel.carol.post(f"/api/instances/{inst['id']}/power", {"action": "stop"})
    assert r.status == 200 and r.body["state"] == "stopped"
    error(panel.carol.post(f"/api/instances/{inst['id']}/power", {"action": "explode"}), 400, "action")
    error(panel.carol.post(f"/api/instances/{MISSING}/power", {"action": "start"}), 404, "id")
    assert panel.carol.post(f"/api/instances/{inst['id']}/power", {"action": "start"}).status == 200
    wait_state(panel.admin, inst["id"], "running", timeout=20)


def test_delete_instance(panel: Panel) -> None:
    inst = panel.deploy(panel.carol, name="gone")
    r = panel.carol.delete("/api/instance/delete", {"id": inst["id"]})
    assert r.status == 201 and set(r.body) == INSTANCE_FIELDS
    assert r.body["state"] in ("releasing", "released") and r.body["InternalState"] in ("DELETING", "DELETED")
    assert wait_state(panel.admin, inst["id"], "released", timeout=20)["allocations"] == []
    error(panel.admin.delete("/api/instance/delete", {}), 400, "id")
    error(panel.admin.delete("/api/instance/delete", {"id": MISSING}), 400, "id")


def test_images(panel: Panel) -> None:
    """Skyport's image shape at /api/images (what its dashboards read), Moorage's at /api/catalog/images."""
    r = panel.carol.get("/api/images")
    assert r.status == 200 and isinstance(r.body, list) and r.body
    skyport = {"Id", "Name", "Image", "AltImages", "Cmd", "Env", "StopCommand", "Scripts", "Variables",
               "Description", "Author", "AuthorName", "Meta"}  # fmt: skip
    assert all(set(i) == skyport for i in r.body)
    httpd = next(i for i in r.body if i["Name"] == "busybox-httpd")
    assert httpd["Image"] == "moorage-test/busybox:latest" and "SERVER_MOTD=hello" in httpd["Env"]
    assert httpd["Variables"]["SERVER_MOTD"]["default"] == "hello"
    ours = panel.carol.get("/api/catalog/images")
    fields = {"name", "image", "description", "variables", "startup", "stopSignal", "ports", "organization",
              "source"}  # fmt: skip
    assert ours.status == 200 and all(set(i) == fields for i in ours.body)
    assert [i["name"] for i in ours.body] == [i["Name"] for i in r.body]


def test_nodes(panel: Panel) -> None:
    r = panel.carol.get("/api/nodes")
    assert r.status == 200 and all(set(n) == NODE_FIELDS for n in r.body)
    listed = next(n for n in r.body if n["id"] == panel.node["id"])
    assert listed["status"] == "ready" and listed["isOnline"] and listed["heartbeatAgeSeconds"] is not None
    assert listed["allocations"]["total"] == 12
    used = listed["used"]
    inst = panel.deploy(panel.carol, name="counted", memory="128", cpu="20")
    after = next(n for n in panel.carol.get("/api/nodes").body if n["id"] == panel.node["id"])
    assert (after["used"]["ram"], after["used"]["cpu"]) == (used["ram"] + 128, used["cpu"] + 20)
    assert after["allocations"]["assigned"] == listed["allocations"]["assigned"] + 1
    panel.carol.delete("/api/instance/delete", {"id": inst["id"]})


def test_create_node(panel: Panel) -> None:
    body = {"name": "n2", "tags": "a,b", "ram": "2048", "disk": "4096", "processor": "2",
            "address": "10.0.0.2", "port": "8080"}  # fmt: skip
    r = panel.admin.post("/api/nodes/create", body)
    assert r.status == 201 and set(r.body) == NODE_FIELDS | {
        "joinToken", "joinTokenExpiresAt", "agentCommand", "allocationList",
    }  # fmt: skip
    assert (r.body["tags"], r.body["ram"], r.body["status"]) == (["a", "b"], 2048, "awaiting_enrollment")
    for field in ("name", "ram", "disk", "processor", "address", "port"):
        error(
            panel.admin.post("/api/nodes/create", {k: v for k, v in body.items() if k != field}), 400, field
        )
    error(panel.carol.post("/api/nodes/create", body), 403)
    assert panel.admin.delete("/api/nodes/delete", {"nodeId": r.body["id"]}).status == 201


def test_delete_node(panel: Panel) -> None:
    error(panel.admin.delete("/api/nodes/delete", {}), 400, "nodeId")
    error(panel.admin.delete("/api/nodes/delete", {"nodeId": MISSING}), 400, "nodeId")
    error(panel.carol.delete("/api/nodes/delete", {"nodeId": panel.node["id"]}), 403)
    # Live instances hold the contract node: refused without force (the force path is in test_panel.py).
    message = error(panel.admin.delete("/api/nodes/delete", {"nodeId": panel.node["id"]}), 400, "nodeId")
    assert "force" in message
    r = panel.admin.post(
        "/api/nodes/create",
        {"name": "short-lived", "ram": 1, "disk": 1, "processor": 1, "address": "10.0.0.3", "port": 1},
    )
    r = panel.admin.delete("/api/nodes/delete", {"nodeId": r.body["id"]})
    assert r.status == 201 and r.body["releasedInstances"] == []


def test_every_route_refuses_a_missing_or_wrong_key(panel: Panel) -> None:
    routes = [("GET", "/api/users"), ("POST", "/api/getUser"), ("POST", "/api/auth/create-user"),
              ("GET", "/api/instances"), ("POST", "/api/instances/deploy"),
              ("DELETE", "/api/instance/delete"), ("POST", "/api/getUserInstance"),
              ("POST", "/api/getInstance"),
              ("POST", f"/api/instances/suspend/{MISSING}"), ("POST", f"/api/instances/unsuspend/{MISSING}"),
              ("GET", "/api/images"), ("GET", "/api/nodes"), ("POST", "/api/nodes/create"),
              ("DELETE", "/api/nodes/delete")]  # fmt: skip
    for method, path in routes:
        body: dict[str, Any] | None = None if method == "GET" else {}
        r = panel.admin.call(method, path, body, key=False)
        assert (r.status, r.body) == (401, {"error": "API key is required"}), (method, path)
    # A wrong key counts against the address (ten in a minute lock it out): three routes show the answer.
    for method, path in routes[:3]:
        r = panel.admin.call(method, path, None if method == "GET" else {}, key="mrg_nope")
        assert (r.status, r.body) == (401, {"error": "API Key Invalid"}), (method, path)
