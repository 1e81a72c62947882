"""The Drone autoscaler's own CLI (`drone server create|ls|info|destroy [--force]`, `drone autoscale
version`), replayed as its Go client sends it: a Bearer token, and `server create` a POST with no body and
no Content-Type, the operator's configuration supplying image, size and region. Here the coordinator has
only `servers.image` set (the size is the default, no region is configured and the node is in none), and
no catalog files: the built-in catalogs serve."""

from __future__ import annotations

import functools
import json
from typing import Any

from bench.daemons import OneNodeFleet, instance, wait_for
from tests.compat.conftest import Reply, send, url
from tests.dockerenv import serves

GO = {"User-Agent": "Go-http-client/1.1", "Accept-Encoding": "gzip"}


class DroneCli:
    def __init__(self, compat: OneNodeFleet) -> None:
        self.base = url(compat)
        self.headers = {**GO, "Authorization": f"Bearer {compat.coordinator.admin_key}"}

    def call(self, method: str, path: str, body: bytes | None = None) -> Reply:
        return send(self.base, method, path, headers=self.headers, body=body)

    def server(self, name: str) -> dict[str, Any]:
        r = self.call("GET", f"/api/servers/{name}")
        assert r.status == 200, r.text
        found: dict[str, Any] = r.json
        return found


def test_version_create_ls_info_destroy_as_the_cli_calls_them(compat: OneNodeFleet) -> None:
    drone = DroneCli(compat)
    version = drone.call("GET", "/version")
    assert version.status == 200 and set(version.json) == {"version", "commit", "source"}

    created = drone.call("POST", "/api/servers")  # no body, no Content-Type
    assert created.status == 200, created.text
    server = created.json
    assert server["name"].startswith("agent-") and len(server["name"]) == len("agent-") + 8
    assert (server["image"], server["size"], server["region"]) == ("busybox-httpd", "small", "")
    assert server["state"] in ("pending", "creating", "created", "staging", "running")

    def running() -> dict[str, Any] | None:
        found = drone.server(server["name"])
        return found if found["state"] == "running" else None

    up = wait_for(running, 60, "the server to run")
    port = instance(compat.api, server["id"])["Primary"]
    assert up["address"] == f"127.0.0.1:{port}" and up["started"] > 0
    assert wait_for(functools.partial(serves, port), 30, "the server's service")

    listed = drone.call("GET", "/api/servers")
    assert listed.status == 200 and server["name"] in {s["name"] for s in listed.json}

    destroyed = drone.call("DELETE", f"/api/servers/{server['name']}")
    assert destroyed.status == 200 and destroyed.json["state"] == "shutdown", destroyed.text
    wait_for(lambda: drone.server(server["name"])["state"] == "stopped", 30, "the server to stop")
    wait_for(lambda: not serves(port), 30, "its service to go")


def test_destroy_force_removes_a_server_in_error(compat: OneNodeFleet) -> None:
    drone = DroneCli(compat)
    body = json.dumps({"image": "moorage-test/missing:1"}).encode()
    created = drone.call("POST", "/api/servers", body)
    assert created.status == 200, created.text
    name = created.json["name"]
    wait_for(lambda: drone.server(name)["state"] == "error", 60, "the server to fail")
    gone = drone.call("DELETE", f"/api/servers/{name}?force=true")
    assert gone.status == 204 and gone.text == ""
    assert drone.call("GET", f"/api/servers/{name}").status == 404


def test_the_cli_without_a_token_is_refused(compat: OneNodeFleet) -> None:
    r = send(url(compat), "POST", "/api/servers", headers=GO)
    assert r.status == 401 and "message" in r.json
