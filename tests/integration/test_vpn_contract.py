"""The vpn dialect's contract (seed 004, Bingo VPN's open API v2): the wrapped answers, the list envelope,
every field of the document's table, the error bodies as the document shows them, rename, redeploy by
country (and its refusals), and expiry. A real coordinator and real agent code over an in-memory runtime;
heartbeat status, measured bandwidth and the cap on real Docker are in test_vpn_docker.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from bench.daemons import wait_for
from tests.integration.sized_fleet import SizedFleet, sized_fleet

NODE_FIELDS = {
    "id", "name", "organization", "country", "country_display", "ip", "host", "port", "instance_id",
    "instance_status", "instance_status_display", "bandwidth", "bandwidth_used_m", "status", "status_display",
    "can_redeploy", "server", "info", "expire_time", "status_update_time", "update_time", "create_time",
}  # fmt: skip
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
NOT_FOUND = {"detail": "Can not find the server"}


class Vpn:
    def __init__(self, world: SizedFleet, name: str) -> None:
        self.world = world
        self.api, self.org = world.user(name)

    def deploy(self, name: str, region: str = "eu", bandwidth: int = 8) -> int:
        body = {"image": "busybox-httpd", "memory": 64, "cpu": 10, "name": name, "regionId": region}
        r = self.api.post("/api/instances/deploy", {**body, "bandwidth": bandwidth})
        assert r.status == 201, r.body
        listed = self.api.get("/api/v2/nodes/?page_size=100").body["data"]["results"]
        return int(next(n["id"] for n in listed if n["name"] == name and n["status"] != 20))

    def node(self, number: int) -> dict[str, Any]:
        r = self.api.get(f"/api/v2/nodes/{number}/")
        assert r.status == 200, r.body
        assert set(r.body) == {"success", "data", "error"} and r.body["success"] is True
        found: dict[str, Any] = r.body["data"]
        return found

    def wait_status(self, number: int, code: int, timeout: float = 20) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: (n := self.node(number))["status"] == code and n, timeout, f"node {number} status {code}"
        )
        return found


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, coordinator_storage: dict[str, Any]
) -> Iterator[SizedFleet]:
    with sized_fleet(tmp_path_factory.mktemp("vpn"), eu_limit=20, extra=coordinator_storage) as w:
        yield w


@pytest.fixture(scope="module")
def vera(world: SizedFleet) -> Vpn:
    return Vpn(world, "vera")


def test_detail_has_every_field_of_the_table(vera: Vpn) -> None:
    number = vera.deploy("vpn-de-1")
    node = vera.wait_status(number, 19)
    assert set(node) == NODE_FIELDS
    assert (node["status"], node["status_display"], node["name"]) == (19, "Ready", "vpn-de-1")
    assert node["organization"]["id"] == vera.org and node["organization"]["name"] == "vera"
    assert (node["country"], node["country_display"]) == ("de", "Germany")
    assert (node["ip"], node["host"]) == ("127.0.0.1", "127.0.0.1") and node["port"] > 0
    assert node["instance_id"] and (node["instance_status"], node["instance_status_display"]) == (
        1,
        "Running",
    )
    assert (node["bandwidth"], node["bandwidth_used_m"], node["can_redeploy"]) == (8.0, 0.0, True)
    assert node["server"]["region"] == "eu" and node["server"]["name"] == "node-eu"
    assert node["expire_time"] is None and node["info"] is None
    assert all(STAMP.match(node[k]) for k in ("status_update_time", "update_time", "create_time"))
    # The same answer without the trailing slash.
    assert vera.api.get(f"/api/v2/nodes/{number}").body["data"]["id"] == number


def test_list_is_wrapped_paged_and_per_organization(world: SizedFleet, vera: Vpn) -> None:
    vera.deploy("vpn-de-2")
    vera.deploy("vpn-us-1", region="us")
    r = vera.api.get("/api/v2/nodes/")
    assert r.status == 200 and r.body["success"] is True and r.body["error"] is None
    data = r.body["data"]
    assert set(data) == {"count", "next", "previous", "results"}
    assert data["count"] == len(data["results"]) >= 3 and data["next"] is None and data["previous"] is None
    ids = [n["id"] for n in data["results"]]
    assert ids == sorted(ids) and all(set(n) == NODE_FIELDS for n in data["results"])
    first = vera.api.get("/api/v2/nodes/?page_size=1").body["data"]
    assert [n["id"] for n in first["results"]] == ids[:1] and "page=2" in first["next"]
    second = vera.api.get(first["next"].split("/api", 1)[1].join(["/api", ""])).body["data"]
    assert [n["id"] for n in second["results"]] == ids[1:2] and "page=1" in second["previous"]
    assert vera.api.get("/api/v2/nodes").body["data"]["count"] == data["count"]
    other, _ = world.user("walt")
    assert other.get("/api/v2/nodes/").body["data"]["count"] == 0
    assert other.get(f"/api/v2/nodes/{ids[0]}/").body == NOT_FOUND
    assert vera.api.get("/api/v2/nodes/?page_size=101").status == 400


def test_errors_are_the_documents_bodies(vera: Vpn) -> None:
    for path in (
        "/api/v2/nodes/999999/",
        "/api/v2/nodes/abc/",
        "/api/v2/nodes/%C2%B2/",
        "/api/v2/nodes/99999999999999999999/",
        "/api/v2/nodes/999999/redeploy/",
    ):
        method = "POST" if path.endswith("redeploy/") else "GET"
        r = vera.api.call(method, path, {} if method == "POST" else None)
        assert (r.status, r.body) == (404, NOT_FOUND), path


def test_rename_and_only_rename(vera: Vpn) -> None:
    number = vera.deploy("to-rename")
    r = vera.api.call("PATCH", f"/api/v2/nodes/{number}/", {"name": "New Name"})
    assert r.status == 200 and r.body["success"] is True and r.body["data"]["name"] == "New Name"
    assert vera.node(number)["name"] == "New Name"
    for body, field in (
        ({"status": 19}, "status"),
        ({"name": "x", "bandwidth": 100}, "bandwidth"),
        ({}, "name"),
    ):
        bad = vera.api.call("PATCH", f"/api/v2/nodes/{number}", body)
        assert bad.status == 400 and list(bad.body) == [field] and isinstance(bad.body[field], list), bad.body
    assert vera.api.call("PATCH", f"/api/v2/nodes/{number}/", {"name": "x" * 101}).body.keys() == {"name"}


def test_redeploy_to_another_country(vera: Vpn) -> None:
    number = vera.deploy("moving")
    vera.wait_status(number, 19)
    bad = vera.api.post(f"/api/v2/nodes/{number}/redeploy/", {"country_code": "XX"})
    assert bad.status == 400
    assert bad.body == {"country_code": ["Invalid country code: XX. Valid country codes include: DE, US"]}
    # A real country without a region is not valid here either.
    assert vera.api.post(f"/api/v2/nodes/{number}/redeploy/", {"country_code": "JP"}).body.keys() == {
        "country_code"
    }
    r = vera.api.post(f"/api/v2/nodes/{number}/redeploy/", {"force": False, "country_code": "US"})
    assert r.status == 200, r.body
    assert r.body["original_node"] == {"id": number, "status": 20, "status_display": "Pending Release"}
    new = r.body["new_node"]
    assert set(new) == {"id", "country", "country_display", "status", "status_display"}
    assert (new["country"], new["country_display"]) == ("US", "United States") and new["id"] > number
    moved = vera.wait_status(new["id"], 19)
    assert (moved["country"], moved["server"]["region"], moved["name"], moved["bandwidth"]) == (
        "us", "us", "moving", 8.0
    )  # fmt: skip
    assert moved["can_redeploy"] is False  # its redeploy_max_count is 0
    # The original is released once the new one is Ready.
    assert vera.wait_status(number, 21)["status_display"] == "Released"
    assert number not in [
        n["id"] for n in vera.api.get("/api/v2/nodes/?page_size=100").body["data"]["results"]
    ]
    # The new one may not be redeployed again without force; with force the old one goes at once.
    again = vera.api.post(f"/api/v2/nodes/{new['id']}/redeploy/", {})
    assert again.status == 400
    assert again.body == {"detail": "Server cann't redeploy now (max redeploy count reached)"}
    forced = vera.api.post(f"/api/v2/nodes/{new['id']}/redeploy/", {"force": True, "country_code": "de"})
    assert forced.status == 200 and forced.body["new_node"]["country"] == "DE"
    vera.wait_status(new["id"], 21)


def test_one_of_concurrent_redeploys_goes_on(vera: Vpn) -> None:
    number = vera.deploy("contended")
    vera.wait_status(number, 19)
    with ThreadPoolExecutor(5) as pool:
        answers = list(
            pool.map(
                lambda _: vera.api.post(f"/api/v2/nodes/{number}/redeploy/", {"country_code": "US"}), range(5)
            )
        )
    assert sorted(a.status for a in answers) == [200] + [400] * 4, [a.body for a in answers]
    refused = [a.body for a in answers if a.status == 400]
    assert all(b == {"detail": "Server cann't redeploy on this status(20)"} for b in refused), refused
    vera.wait_status(number, 21)


def test_a_servers_api_server_is_not_redeployed_here(world: SizedFleet) -> None:
    made = world.api.post("/api/servers", {"name": "runner-x"})
    assert made.status == 200, made.body
    listed = world.api.get("/api/v2/nodes/?page_size=100").body["data"]["results"]
    number = next(n["id"] for n in listed if n["name"] == "runner-x")
    r = world.api.post(f"/api/v2/nodes/{number}/redeploy/", {"force": True, "country_code": "US"})
    assert r.status == 400 and "servers API" in r.body["detail"]


def test_redeploy_refuses_a_status_it_may_not_leave(vera: Vpn) -> None:
    number = vera.deploy("stopped-one")
    vera.wait_status(number, 19)
    instance = next(
        i
        for i in vera.api.get("/api/instances").body
        if i["name"] == "stopped-one" and i["state"] == "running"
    )
    assert vera.api.post(f"/api/instances/{instance['id']}/power", {"action": "stop"}).status == 200
    vera.wait_status(number, 11)
    r = vera.api.post(f"/api/v2/nodes/{number}/redeploy/", {"country_code": "US"})
    assert (r.status, r.body) == (400, {"detail": "Server cann't redeploy on this status(11)"})


def test_a_cap_the_agent_cannot_set_is_reported_in_info(vera: Vpn) -> None:
    number = vera.deploy("too-fast", bandwidth=5000)
    node = vera.wait_status(number, 19)
    info = wait_for(lambda: vera.node(number)["info"], 10, "the agent's report in info")
    assert info.startswith("bandwidth cap of 5000 Mbps not in force") and "1000 Mbps" in info
    assert node["bandwidth"] == 5000.0


def test_openapi_lists_both_spellings(world: SizedFleet) -> None:
    paths = world.api.get("/api/openapi.json").body["paths"]
    for path in ("/api/v2/nodes/", "/api/v2/nodes/{node_id}/", "/api/v2/nodes/{node_id}/redeploy/"):
        assert path in paths and path.rstrip("/") in paths


@pytest.fixture(scope="module")
def expiring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SizedFleet]:
    extra = {"instances": {"default_lifetime_s": 4, "expiry_check_s": 0.5}}
    with sized_fleet(tmp_path_factory.mktemp("vpn-expiry"), eu_limit=5, extra=extra) as w:
        yield w


def test_an_expired_instance_is_released(expiring: SizedFleet) -> None:
    user = Vpn(expiring, "xena")
    number = user.deploy("short-lived")
    node = user.node(number)
    assert STAMP.match(node["expire_time"]) and node["expire_time"] > node["create_time"]
    released = user.wait_status(number, 21, timeout=20)
    assert released["expire_time"] <= released["status_update_time"]
