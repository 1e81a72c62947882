"""The image catalog against a real coordinator process: the configured entries, admin additions kept
across a restart, the rules a definition must follow, and deploys naming an added image."""

from __future__ import annotations

from pathlib import Path

from bench.daemons import Api, CoordinatorProcess, create_node, port_block

ECHO = {
    "name": "echo-server",
    "image": "moorage-test/busybox:latest",
    "description": "nc echoing on $SERVER_PORT",
    "variables": [{"name": "GREETING", "default": "hi", "pattern": "[a-z]{1,10}"}],
    "startup": ["/bin/sh", "-c", "nc -lk -p $SERVER_PORT -e cat"],
    "stop_signal": "SIGTERM",
    "ports": [7],
}


def member(api: Api) -> Api:
    """A signed-in user who is not an admin."""
    user = {"username": "member", "email": "member@example.com", "password": "long-enough"}
    assert api.post("/api/auth/create-user", user).status == 201
    token = api.post("/api/auth/login", {"username": "member", "password": "long-enough"}, key=False)
    return Api(api.url, None, {"Authorization": f"Bearer {token.body['token']}"})


def test_the_catalog_lists_adds_and_removes(tmp_path: Path) -> None:
    coordinator = CoordinatorProcess(tmp_path / "coordinator")
    coordinator.start()
    try:
        api = coordinator.api()
        listed = api.get("/api/catalog/images")
        assert listed.status == 200
        httpd = next(i for i in listed.body if i["name"] == "busybox-httpd")
        assert httpd["image"] == "moorage-test/busybox:latest" and httpd["source"] == "config"
        assert httpd["variables"][0]["name"] == "SERVER_MOTD" and httpd["variables"][0]["default"] == "hello"
        assert httpd["stopSignal"] == "SIGTERM"

        someone = member(api)
        assert someone.get("/api/catalog/images").status == 200, "any signed-in caller reads the catalog"
        assert someone.post("/api/images", ECHO).status == 403
        assert api.get("/api/catalog/images", key=False).status == 401

        for bad, field in [
            ({**ECHO, "image": "Not A Reference"}, "image"),
            ({**ECHO, "name": "Bad Name"}, "name"),
            ({**ECHO, "variables": [{"name": "X", "pattern": "("}]}, "pattern"),
            ({**ECHO, "stop_signal": "TERM"}, "stop_signal"),
            ({**ECHO, "surprise": 1}, "surprise"),
        ]:
            r = api.post("/api/images", bad)
            assert r.status == 400 and field in r.body["error"], (field, r.body)

        added = api.post("/api/images", ECHO)
        assert added.status == 201 and added.body["source"] == "api", added.body
        assert api.post("/api/images", ECHO).status == 409
        assert api.post("/api/images", {**ECHO, "name": "busybox-httpd"}).status == 409

        node = create_node(api, port_block(2))
        deploy = {"image": "echo-server", "memory": 64, "cpu": 50, "nodeId": node["id"], "name": "e"}
        refused = api.post("/api/instances/deploy", {**deploy, "variables": {"GREETING": "HELLO!"}})
        assert refused.status == 400 and "GREETING" in refused.body["error"]
        placed = api.post("/api/instances/deploy", deploy)
        assert placed.status == 201 and placed.body["image"] == "echo-server", placed.body
        assert placed.body["Image"] == "moorage-test/busybox:latest"

        # Kept in the database: a restarted coordinator still has it.
        coordinator.stop()
        coordinator.start()
        api = coordinator.api()
        assert "echo-server" in [i["name"] for i in api.get("/api/catalog/images").body]

        assert api.delete("/api/images/busybox-httpd").status == 400, "configured entries live in the file"
        assert api.delete("/api/images/nope").status == 404
        assert api.delete("/api/images/echo-server").status == 204
        assert "echo-server" not in [i["name"] for i in api.get("/api/catalog/images").body]
        assert api.post("/api/getInstance", {"id": placed.body["id"]}).status == 200, "its instance stays"
    finally:
        coordinator.stop()
