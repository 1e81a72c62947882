"""The regions API's own frontend (the Kyro/Argon admin pages), replayed as it talks: a JWT from the login,
optional fields left out rather than sent empty, the fallback shown by name beside each region, and a
node put into a region (and out of it) with `PATCH /api/nodes/{id}/region`."""

from __future__ import annotations

from typing import Any

from bench.daemons import OneNodeFleet, wait_for
from tests.compat.conftest import Reply, send_json, url


class AdminPages:
    def __init__(self, compat: OneNodeFleet) -> None:
        self.base = url(compat)
        login = compat.api.post(
            "/api/auth/login", {"username": "kyro-admin", "password": "kyro-admin-pass"}, key=False
        )
        assert login.status == 200, login.body
        self.headers = {"Authorization": f"Bearer {login.body['token']}", "Accept": "application/json"}

    def call(self, method: str, path: str, payload: Any = None) -> Reply:
        return send_json(self.base, method, path, self.headers, payload)


def test_regions_pages_create_show_fallbacks_and_move_a_node(compat: OneNodeFleet) -> None:
    made = compat.api.post(
        "/api/auth/create-user",
        {"username": "kyro-admin", "email": "kyro@example.com", "password": "kyro-admin-pass", "admin": True},
    )
    assert made.status == 201, made.body
    pages = AdminPages(compat)

    # Optional fields are left out, not sent empty.
    home = pages.call("POST", "/api/regions", {"name": "Home", "identifier": "kyro-home"})
    assert home.status == 201, home.text
    assert (home.json["serverLimit"], home.json["countryId"], home.json["fallbackRegion"]) == (
        100,
        None,
        None,
    )
    edge = pages.call(
        "POST",
        "/api/regions",
        {"name": "Edge", "identifier": "kyro-edge", "countryId": "DE", "fallbackRegionId": home.json["id"]},
    )
    assert edge.status == 201, edge.text
    listed = {r["identifier"]: r for r in pages.call("GET", "/api/regions").json}
    assert listed["kyro-edge"]["fallbackRegion"] == {
        "id": home.json["id"],
        "name": "Home",
        "identifier": "kyro-home",
    }

    # The node page puts the node into a region, and the region page shows it online with its allocations.
    node_id = compat.node["id"]
    moved = pages.call("PATCH", f"/api/nodes/{node_id}/region", {"regionId": edge.json["id"]})
    assert moved.status == 200 and moved.json["regionId"] == edge.json["id"], moved.text

    def shown() -> dict[str, Any] | None:
        region = pages.call("GET", f"/api/regions/{edge.json['id']}").json
        return region if region["stats"]["onlineNodeCount"] == 1 else None

    region = wait_for(shown, 10, "the node online in its region")
    assert [n["id"] for n in region["nodes"]] == [node_id] and region["nodes"][0]["isOnline"]
    free = pages.call("GET", f"/api/regions/{edge.json['id']}/allocations").json
    assert {a["port"] for a in free} <= set(compat.ports) and free

    # A rename sends only the name.
    renamed = pages.call("PATCH", f"/api/regions/{edge.json['id']}", {"name": "Edge DE"})
    assert renamed.status == 200 and renamed.json["countryId"] == "DE" and renamed.json["name"] == "Edge DE"

    # Out of the region again, and the regions deleted.
    back = pages.call("PATCH", f"/api/nodes/{node_id}/region", {"regionId": None})
    assert back.status == 200 and back.json["regionId"] is None
    assert pages.call("DELETE", f"/api/regions/{edge.json['id']}").status == 204
    assert pages.call("DELETE", f"/api/regions/{home.json['id']}").status == 204
