"""Dashboards written for the Skyport panel API (Heliactyl-style "Hydra"/"Hydren": Node.js, axios,
`x-api-key`), replayed as they talk: JSON bodies with numbers as strings, ports as "container:host"
pairs, the catalog entry as `imagename` beside its Docker reference, and what they read back (Id, Name,
User, Node, Memory, Cpu, Ports, Primary, InternalState). Written from what such dashboards send, against
a real coordinator and a real agent on Docker."""

from __future__ import annotations

import functools
import time
from typing import Any

from bench.daemons import OneNodeFleet, wait_for
from tests.compat.conftest import Reply, send, send_json, url
from tests.dockerenv import serves


class Dashboard:
    """What an axios client of the panel sends: its key, JSON, and axios' own headers."""

    def __init__(self, compat: OneNodeFleet) -> None:
        self.base = url(compat)
        self.headers = {
            "x-api-key": compat.coordinator.admin_key,
            "Accept": "application/json, text/plain, */*",
            "User-Agent": "axios/1.7.2",
        }

    def call(self, method: str, path: str, payload: Any = None) -> Reply:
        return send_json(self.base, method, path, self.headers, payload)

    def totals(self, user_id: str) -> tuple[int, int, int]:
        """(servers, Memory, Cpu) of the user, summed as the dashboards sum them against the user's plan."""
        listed = self.call("POST", "/api/getUserInstance", {"userId": user_id}).json
        assert all(i["User"] == user_id for i in listed), "another user's server in the list"
        return len(listed), sum(int(i["Memory"]) for i in listed), sum(int(i["Cpu"]) for i in listed)


def test_a_dashboard_starts_signs_up_deploys_in_every_port_form_and_deletes(compat: OneNodeFleet) -> None:
    panel = Dashboard(compat)
    # At start it checks the panel's base URL (no key) and exits unless it answers 200.
    assert send(url(compat), "GET", "/", headers={"User-Agent": "axios/1.7.2"}).status == 200

    # Sign-up: the dashboard's own user id, then the lookup by email it does at every login.
    user_id = f"hydra-{int(time.time() * 1000)}"
    made = panel.call(
        "POST",
        "/api/auth/create-user",
        {
            "username": user_id,
            "email": f"{user_id}@example.com",
            "password": "s3cret-pass",
            "userId": user_id,
        },
    )
    assert made.status == 201 and made.json["userId"] == user_id, made.text
    found = panel.call("POST", "/api/getUser", {"type": "email", "value": f"{user_id}@example.com"})
    assert found.status in (200, 201) and found.json["userId"] == user_id, found.text

    # The create-server page: images (Skyport's shape) and nodes.
    images = panel.call("GET", "/api/images").json
    image = next(i for i in images if i["Name"] == "busybox-httpd")
    assert image["Image"] and isinstance(image["Env"], list) and "SERVER_MOTD" in image["Variables"]
    nodes = panel.call("GET", "/api/nodes").json
    node = next(n for n in nodes if n["id"] == compat.node["id"])

    p = compat.ports
    forms = [  # (ports, primary) as the dashboards write them
        (f"{p[0]}:{p[0]}", f"{p[0]}:{p[0]}"),
        (f"{p[1]}:{p[1]},{p[2]}:{p[2]}", str(p[2])),
        (str(p[3]), str(p[3])),
    ]
    deployed: list[tuple[str, int]] = []
    for n, (ports, primary) in enumerate(forms):
        r = panel.call(
            "POST",
            "/api/instances/deploy",
            {
                "image": image["Image"],
                "imagename": image["Name"],
                "memory": "64" if n else "64MB",
                "cpu": "10",
                "ports": ports,
                "nodeId": node["id"],
                "name": f"hydra-server-{n}",
                "user": user_id,
                "primary": primary,
                "variables": {},
            },
        )
        assert r.status == 201, r.text
        assert r.json["Id"] and r.json["User"] == user_id and r.json["Node"]["id"] == node["id"]
        deployed.append((r.json["Id"], int(primary.split(":")[-1])))
    for _, port in deployed:
        assert wait_for(functools.partial(serves, port), 60, f"the server on port {port}")

    # The server list and one server, as the dashboard reads them.
    assert panel.totals(user_id) == (3, 3 * 64, 3 * 10)
    for iid, port in deployed:
        one = panel.call("POST", "/api/getInstance", {"id": iid}).json
        assert (one["Id"], one["User"], one["Primary"]) == (iid, user_id, port)
        assert one["InternalState"] == "READY" and str(port) in one["Ports"].split(",")[0]
        assert one["Node"]["address"] and "apiKey" not in one["Node"]

    # Deleting one: its port stops answering and it no longer counts against the user.
    gone, gone_port = deployed[0]
    r = panel.call("DELETE", "/api/instance/delete", {"id": gone})
    assert r.status == 201, r.text
    wait_for(lambda: not serves(gone_port), 30, "the deleted server to stop answering")
    assert panel.totals(user_id) == (2, 2 * 64, 2 * 10)
    for iid, _ in deployed[1:]:
        assert panel.call("DELETE", "/api/instance/delete", {"id": iid}).status == 201
    assert panel.totals(user_id) == (0, 0, 0)


def test_bad_input_from_a_dashboard_is_a_400_naming_the_field_and_leaves_nothing(
    compat: OneNodeFleet,
) -> None:
    panel = Dashboard(compat)
    port = compat.ports[4]
    good = {"image": "moorage-test/busybox:latest", "imagename": "busybox-httpd", "memory": "64",
            "cpu": "10", "ports": f"{port}:{port}", "nodeId": compat.node["id"], "name": "bad",
            "primary": str(port)}  # fmt: skip
    before = panel.call("GET", "/api/instances?released=true").json
    for over, field in (
        ({"ports": "25565:8080"}, "ports"),
        ({"ports": "a:b"}, "ports"),
        ({"memory": "64XB"}, "memory"),
        ({"imagename": "no-such-image"}, "imagename"),
    ):
        r = panel.call("POST", "/api/instances/deploy", {**good, **over})
        assert r.status == 400 and r.json["field"] == field, (over, r.text)
    assert panel.call("GET", "/api/instances?released=true").json == before
    assert not serves(port)
