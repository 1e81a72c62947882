"""Bad input against a real coordinator process: a 4xx naming the field, and nothing half-written (no
instance row, no claimed allocation). Also the JSON error shape, credentials and the OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from bench.daemons import Api, CoordinatorProcess, create_node, node_view, port_block, running_coordinator
from coordinator.api.app import all_routes


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    with running_coordinator(tmp_path_factory.mktemp("api") / "coordinator") as proc:
        yield proc


@pytest.fixture(scope="module")
def api(coordinator: CoordinatorProcess) -> Api:
    return coordinator.api()


@pytest.fixture(scope="module")
def node(api: Api) -> dict[str, Any]:
    return create_node(api, port_block(4), name="input-node")


def good_deploy(node: dict[str, Any], **over: Any) -> dict[str, Any]:
    port = node["allocationList"][0]["port"]
    return {
        "image": "moorage-test/busybox:latest",
        "memory": 64,
        "cpu": 50,
        "ports": [port],
        "nodeId": node["id"],
        "name": "x",
        **over,
    }


def nothing_written(api: Api, node: dict[str, Any]) -> None:
    assert api.get("/api/instances").body == []
    assert node_view(api, node["id"])["allocations"]["assigned"] == 0


def test_credentials(api: Api) -> None:
    r = api.get("/api/nodes", key=False)
    assert (r.status, r.body) == (401, {"error": "API key is required"})
    r = api.get("/api/nodes", key="mrg_wrong")
    assert (r.status, r.body) == (401, {"error": "API Key Invalid"})
    r = api.get("/api/nodes", key=False, headers={"Authorization": f"Bearer {api.key}"})
    assert r.status == 200
    assert api.get("/api/health", key=False).body["status"] == "ok"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"memory": 0}, "memory"),
        ({"memory": -5}, "memory"),
        ({"memory": "512TB"}, "memory"),  # "512MB" is 512 (Skyport clients send it)
        ({"memory": 1.5}, "memory"),
        ({"cpu": "half"}, "cpu"),
        ({"cpu": 0}, "cpu"),
        ({"image": ""}, "image"),
        ({"image": "Not A Reference!"}, "image"),
        ({"name": ""}, "name"),
        ({"ports": [0]}, "ports.0"),
        ({"ports": "1,1"}, "ports"),
        ({"nodeId": "00000000-0000-0000-0000-000000000000"}, "nodeId"),
        ({"user": "nobody"}, "user"),
        ({"primary": 1}, "primary"),
        ({"variables": "{not json"}, "variables"),
    ],
)
def test_deploy_refuses_bad_fields(
    api: Api, node: dict[str, Any], override: dict[str, Any], field: str
) -> None:
    r = api.post("/api/instances/deploy", good_deploy(node, **override))
    assert r.status == 400, r.body
    assert r.body["field"] == field and r.body["error"].startswith(field)
    nothing_written(api, node)


@pytest.mark.parametrize("missing", ["image", "memory", "cpu", "nodeId", "name"])
def test_deploy_refuses_missing_fields(api: Api, node: dict[str, Any], missing: str) -> None:
    body = good_deploy(node)
    del body[missing]
    r = api.post("/api/instances/deploy", body)
    # A deploy names a node or a region; without either the answer says so.
    message = "give a nodeId or a regionId (one of them)" if missing == "nodeId" else "is required"
    assert (r.status, r.body) == (400, {"error": f"{missing}: {message}", "field": missing})
    nothing_written(api, node)


def test_deploy_refuses_a_port_that_is_not_an_allocation(api: Api, node: dict[str, Any]) -> None:
    outside = node["allocationList"][-1]["port"] + 1
    r = api.post("/api/instances/deploy", good_deploy(node, ports=[outside]))
    assert r.status == 400 and r.body["field"] == "ports" and str(outside) in r.body["error"]
    nothing_written(api, node)


def test_a_taken_port_is_409_and_the_first_claim_stays(api: Api, node: dict[str, Any]) -> None:
    port = node["allocationList"][1]["port"]
    first = api.post("/api/instances/deploy", good_deploy(node, ports=str(port), name="first"))
    assert first.status == 201 and first.body["state"] == "pending"  # the node has no agent yet
    second = api.post("/api/instances/deploy", good_deploy(node, ports=[port], name="second"))
    assert second.status == 409 and str(port) in second.body["error"]
    listed = api.get("/api/instances").body
    assert [i["name"] for i in listed] == ["first"]
    assert api.delete("/api/instance/delete", {"id": first.body["id"]}).body["state"] == "releasing"


def test_deploy_without_ports_claims_the_first_free_allocation(
    api: Api, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = create_node(api, port_block(2), name="no-ports-node")
    r = api.post(
        "/api/instances/deploy",
        {
            "image": "moorage-test/busybox:latest",
            "memory": "32",
            "cpu": "10",
            "nodeId": other["id"],
            "name": "auto",
        },
    )
    assert r.status == 201
    assert r.body["ports"] == [other["allocationList"][0]["port"]]
    assert r.body["allocations"][0]["primary"] is True


def test_body_errors(api: Api) -> None:
    r = api.call("POST", "/api/getInstance", b"{nope")
    assert r.status == 400 and "not valid JSON" in r.body["error"]
    r = api.post("/api/getInstance", {})
    assert (r.status, r.body) == (400, {"error": "id: is required", "field": "id"})
    # The panel document answers 400 for an instance it cannot find.
    r = api.post("/api/getInstance", {"id": "00000000-0000-0000-0000-000000000000"})
    assert r.status == 400 and "does not exist" in r.body["error"]


def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    r = api.get("/api/nope")
    assert (r.status, r.body) == (404, {"error": "no such route"})
    r = api.call("PUT", "/api/nodes")
    assert r.status == 405 and "PUT" in r.body["error"]
    assert "GET" in r.headers["Allow"]


def test_a_body_of_another_type_is_415_and_deep_nesting_400(api: Api) -> None:
    body = b'{"type": "email", "value": "x@example.com"}'
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = api.call("POST", "/api/getUser", body, headers={"Content-Type": kind})
        assert r.status == 415 and "application/json" in r.body["error"], (kind, r.body)
    typed = api.call(
        "POST", "/api/getUser", body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert typed.status == 404 and typed.body["field"] == "value", typed.body  # read, and nobody matched
    untyped = api.call("POST", "/api/getUser", body, headers={"Content-Type": ""})
    assert untyped.status == 404, untyped.body  # JSON without a Content-Type is read as JSON
    deep = b"[" * 1000 + b"]" * 1000
    for path in ("/api/getUser", "/api/auth/login", "/api/instances/deploy", "/api/regions"):
        r = api.call("POST", path, deep, key=path != "/api/auth/login")
        assert r.status == 400 and "nests deeper" in r.body["error"], (path, r.body)
    nested: Any = []
    for _ in range(40):  # past the 32 levels allowed, well short of the parser's own limit
        nested = [nested]
    r = api.post("/api/getUser", {"type": "email", "value": "x", "pad": nested})
    assert r.status == 400 and "nests deeper" in r.body["error"]


def test_a_clients_request_id_is_kept_only_when_it_is_a_plain_token(api: Api) -> None:
    kept = api.get("/api/health", key=False, headers={"x-request-id": "panel-42.abc"})
    assert kept.headers["x-request-id"] == "panel-42.abc"
    for bad in ("a" * 65, "<script>alert(1)</script>", "a b", "'; DROP TABLE audit_log;--"):
        r = api.get("/api/health", key=False, headers={"x-request-id": bad})
        assert r.status == 200 and re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"]), bad


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"name": ""}, "name"),
        ({"ram": "lots"}, "ram"),
        ({"disk": 0}, "disk"),
        ({"processor": -1}, "processor"),
        ({"port": 70000}, "port"),
        ({"address": ""}, "address"),
        ({"address": "../../etc/passwd"}, "address"),
        ({"address": "node one"}, "address"),
        ({"name": "evil\u202egnp"}, "name"),
        ({"organization": True}, "organization"),
        ({"organization": 2**63}, "organization"),
        ({"ram": 2**63}, "ram"),
        ({"allocations": {"bindAddress": "../../etc/passwd", "ports": "40000"}}, "allocations.bindAddress"),
        ({"allocations": {"bindAddress": "node-1.example.net", "ports": "40000"}}, "allocations.bindAddress"),
        ({"allocations": {"bindAddress": "127.0.0.1", "ports": "70000"}}, "allocations.ports"),
        ({"allocations": {"bindAddress": "127.0.0.1", "ports": "10-5"}}, "allocations.ports"),
        ({"allocations": {"bindAddress": "127.0.0.1", "ports": "1-2000"}}, "allocations.ports"),
        ({"regionId": "00000000-0000-0000-0000-000000000000"}, "regionId"),
    ],
)
def test_node_create_refuses_bad_fields(api: Api, override: dict[str, Any], field: str) -> None:
    before = len(api.get("/api/nodes").body)
    body = {
        "name": "n",
        "tags": "",
        "ram": 1024,
        "disk": 1024,
        "processor": 1,
        "address": "127.0.0.1",
        "port": 8080,
        **override,
    }
    r = api.post("/api/nodes/create", body)
    assert r.status == 400, r.body
    assert r.body["field"] == field
    assert len(api.get("/api/nodes").body) == before


def test_node_create_answers_with_a_one_time_token_and_command(api: Api) -> None:
    ports = port_block(3)
    node = create_node(api, ports, name="fresh", tags=["eu", "ssd"])
    assert node["joinToken"].startswith("MOORAGE2::")
    assert node["joinToken"] in node["agentCommand"] and "--coordinator 127.0.0.1:" in node["agentCommand"]
    assert (
        node["status"] == "awaiting_enrollment"
        and node["isOnline"] is False
        and node["tags"] == ["eu", "ssd"]
    )
    assert [a["port"] for a in node["allocationList"]] == ports
    listed = node_view(api, node["id"])
    assert "joinToken" not in listed and listed["allocations"] == {"total": 3, "assigned": 0, "free": 3}


def test_openapi_documents_every_route(api: Api) -> None:
    doc = api.get("/api/openapi.json", key=False).body
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    registered = {(r.method, re.sub(r"{(\w+):[^}]*}", r"{\1}", r.path)) for r in all_routes()}
    assert documented == registered
    deploy = doc["paths"]["/api/instances/deploy"]["post"]
    assert "201" in deploy["responses"] and deploy["requestBody"]["content"]["application/json"]["schema"]


def test_every_protected_route_refuses_without_credentials(api: Api) -> None:
    """Walks the route table, so a new route is covered without editing this test."""
    for route in all_routes():
        if route.access == "public":
            continue
        path = re.sub(r"{\w+}", "00000000-0000-0000-0000-000000000000", route.path)
        r = api.call(route.method, path, {} if route.method != "GET" else None, key=False)
        assert r.status == 401, (route.method, route.path, r.body)


def test_allocations_are_added_named_on_clash_and_kept_while_assigned(api: Api) -> None:
    node = create_node(api, port_block(2), name="alloc-node")
    base = f"/api/nodes/{node['id']}/allocations"
    start = node["allocationList"][-1]["port"] + 1
    r = api.post(base, {"bindAddress": "127.0.0.1", "portRange": {"start": start, "end": start + 4}})
    assert r.status == 201 and [a["port"] for a in r.body] == list(range(start, start + 5))
    r = api.post(base, {"bindAddress": "127.0.0.1", "portRange": {"start": start + 3, "end": start + 6}})
    assert r.status == 409 and f"{start + 3}, {start + 4}" in r.body["error"]
    assert len(api.get(base).body) == 7  # nothing of the clashing call was added
    assert api.post(base, {"bindAddress": "0.0.0.0", "port": start}).status == 201  # other address: no clash
    for bad in (
        {"bindAddress": "127.0.0.1"},
        {"bindAddress": "127.0.0.1", "port": 1, "portRange": {"start": 2, "end": 3}},
        {"bindAddress": "127.0.0.1", "portRange": {"start": 5000, "end": 4000}},
        {"bindAddress": "127.0.0.1", "portRange": {"start": 1000, "end": 2000}},
        {"bindAddress": "127.0.0.1", "port": 70000},
    ):
        assert api.post(base, bad).status == 400, bad
    first = node["allocationList"][0]
    r = api.call("PATCH", f"{base}/{first['id']}", {"alias": "game", "notes": "main port"})
    assert r.status == 200 and (r.body["alias"], r.body["notes"]) == ("game", "main port")
    deployed = api.post(
        "/api/instances/deploy",
        {
            "image": "moorage-test/busybox:latest",
            "memory": 32,
            "cpu": 5,
            "nodeId": node["id"],
            "ports": [first["port"]],
            "name": "holder",
        },
    )
    assert deployed.status == 201
    r = api.delete(f"{base}/{first['id']}")
    assert r.status == 409 and str(first["port"]) in r.body["error"]
    second = node["allocationList"][1]
    assert api.delete(f"{base}/{second['id']}").status == 204
    assert api.delete(f"{base}/{second['id']}").status == 404


def test_a_node_can_be_moved_into_a_region_and_put_in_maintenance(api: Api) -> None:
    region = api.post("/api/regions", {"name": "Moves", "identifier": "moves"}).body
    node = create_node(api, port_block(1), name="mover")
    r = api.call(
        "PATCH", f"/api/nodes/{node['id']}", {"regionId": region["id"], "maintenance": True, "ram": 2048}
    )
    assert r.status == 200 and (r.body["regionId"], r.body["ram"]) == (region["id"], 2048)
    assert api.get(f"/api/regions/{region['id']}").body["stats"]["nodeCount"] == 1
    r = api.post(
        "/api/instances/deploy",
        {
            "image": "moorage-test/busybox:latest",
            "memory": 32,
            "cpu": 5,
            "nodeId": node["id"],
            "name": "blocked",
        },
    )
    assert r.status == 409 and "maintenance" in r.body["error"]
    assert api.call("PATCH", f"/api/nodes/{node['id']}", {"regionId": "nope"}).body["field"] == "regionId"
    assert api.call("PATCH", "/api/nodes/unknown", {"name": "x"}).status == 404
