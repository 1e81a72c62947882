"""Regions (seed 000) and placement against a real coordinator process. The nodes are real agent sessions
(enrollment, mutual TLS, heartbeats) over an in-memory runtime, so placement sees Ready nodes in numbers;
tests/integration/test_foundation.py places through the chain onto a real agent with real Docker."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench.daemons import Api, CoordinatorProcess, FakeAgents, create_node, node_view, port_block, wait_for

KEYS = {
    "id",
    "name",
    "identifier",
    "countryId",
    "fallbackRegionId",
    "fallbackRegion",
    "serverLimit",
    "stats",
    "nodes",
    "createdAt",
    "updatedAt",
}
NODE_KEYS = {
    "id",
    "name",
    "fqdn",
    "port",
    "regionId",
    "isOnline",
    "lastChecked",
    "allocations",
    "region",
    "createdAt",
    "updatedAt",
}
ALLOCATION_KEYS = {
    "id",
    "nodeId",
    "bindAddress",
    "port",
    "alias",
    "notes",
    "assigned",
    "serverId",
    "createdAt",
    "updatedAt",
}


@dataclass
class World:
    coordinator: CoordinatorProcess
    tmp: Path
    agents: list[FakeAgents] = field(default_factory=list)

    @property
    def api(self) -> Api:
        return self.coordinator.api()

    def region(self, identifier: str, **extra: Any) -> dict[str, Any]:
        r = self.api.post("/api/regions", {"name": identifier.upper(), "identifier": identifier, **extra})
        assert r.status == 201, r.body
        found: dict[str, Any] = r.body
        return found

    def nodes(self, region: dict[str, Any] | None, count: int, ports_each: int = 2, **node: Any) -> list[str]:
        """Create ``count`` nodes in the region and bring them online as fake agents."""
        made = []
        for n in range(count):
            extra = {"regionId": region["id"]} if region else {}
            made.append(create_node(self.api, port_block(ports_each), name=f"node-{n}", **extra, **node))
        agents = FakeAgents(
            self.tmp / f"agents-{len(self.agents)}", self.coordinator, [m["joinToken"] for m in made]
        )
        agents.start()
        self.agents.append(agents)
        for node_id in [str(m["id"]) for m in made]:
            wait_for(functools.partial(online, self.api, node_id), 20, "a fake agent to come online")
        return [str(m["id"]) for m in made]

    def deploy(self, region: str, **extra: Any) -> tuple[int, dict[str, Any]]:
        body = {
            "image": "moorage-test/busybox:latest",
            "memory": 256,
            "cpu": 25,
            "regionId": region,
            "name": "x",
            **extra,
        }
        r = self.api.post("/api/instances/deploy", body)
        return r.status, r.body


def online(api: Api, node_id: str) -> bool:
    return bool(node_view(api, node_id)["isOnline"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("regions")
    coordinator = CoordinatorProcess(tmp / "coordinator")
    coordinator.start()
    w = World(coordinator, tmp)
    try:
        yield w
    finally:
        for agents in w.agents:
            agents.stop()
        coordinator.stop()


def user_api(world: World, name: str) -> Api:
    api = world.api
    api.post(
        "/api/auth/create-user",
        {"username": name, "email": f"{name}@example.com", "password": "correct horse"},
    )
    token = api.post("/api/auth/login", {"username": name, "password": "correct horse"}, key=False).body[
        "token"
    ]
    return Api(api.url, None, headers={"Authorization": f"Bearer {token}"})


# ---------------------------------------------------------------- the document's contract


def test_create_list_and_detail_have_every_field(world: World) -> None:
    made = world.region("eu-west", countryId="IE", serverLimit=40)
    assert set(made) == KEYS
    assert made["stats"] == {"serverCount": 0, "nodeCount": 0, "onlineNodeCount": 0, "atCapacity": False}
    assert (made["countryId"], made["serverLimit"], made["fallbackRegionId"], made["nodes"]) == (
        "IE",
        40,
        None,
        [],
    )
    listed = {r["identifier"]: r for r in world.api.get("/api/regions").body}
    assert listed["eu-west"] == made
    assert world.api.get(f"/api/regions/{made['id']}").body == made
    assert world.region("defaults")["serverLimit"] == 100


@pytest.mark.parametrize(
    "body",
    [
        {"name": "", "identifier": "ok"},
        {"name": "x" * 101, "identifier": "ok"},
        {"name": "n", "identifier": "a"},
        {"name": "n", "identifier": "x" * 21},
        {"name": "n", "identifier": "Upper"},
        {"name": "n", "identifier": "under_score"},
        {"name": "n", "identifier": "ok", "countryId": "USA"},
        {"name": "n", "identifier": "ok", "serverLimit": 0},
        {"name": "n", "identifier": "ok", "fallbackRegionId": "not-a-uuid"},
        {"identifier": "ok"},
    ],
)
def test_create_refuses_out_of_limits(world: World, body: dict[str, Any]) -> None:
    r = world.api.post("/api/regions", body)
    assert r.status == 400 and set(r.body) == {"error"}, r.body


def test_the_originals_error_words(world: World) -> None:
    api = world.api
    first = world.region("words-a")
    r = api.post("/api/regions", {"name": "again", "identifier": "words-a"})
    assert (r.status, r.body) == (400, {"error": "Region with this identifier already exists"})
    r = api.post(
        "/api/regions",
        {"name": "n", "identifier": "words-b", "fallbackRegionId": "123e4567-e89b-12d3-a456-426614174000"},
    )
    assert (r.status, r.body) == (400, {"error": "Fallback region not found"})
    r = api.call("PATCH", f"/api/regions/{first['id']}", {"fallbackRegionId": first["id"]})
    assert (r.status, r.body) == (400, {"error": "Region cannot be its own fallback"})
    r = api.call(
        "PATCH", f"/api/regions/{first['id']}", {"fallbackRegionId": "123e4567-e89b-12d3-a456-426614174000"}
    )
    assert (r.status, r.body) == (404, {"error": "Fallback region not found"})
    for method in ("GET", "PATCH", "DELETE"):
        r = api.call(
            method, "/api/regions/123e4567-e89b-12d3-a456-426614174000", {} if method == "PATCH" else None
        )
        assert (r.status, r.body) == (404, {"error": "Region not found"}), method


def test_reads_need_a_caller_writes_need_an_admin(world: World) -> None:
    region = world.region("access")
    user = user_api(world, "region-reader")
    assert user.get("/api/regions").status == 200
    assert user.get(f"/api/regions/{region['id']}/allocations").status == 200
    forbidden = (403, {"error": "Insufficient permissions"})
    r = user.post("/api/regions", {"name": "n", "identifier": "nope"})
    assert (r.status, r.body) == forbidden
    patched = user.call("PATCH", f"/api/regions/{region['id']}", {"name": "x"})
    assert (patched.status, patched.body) == forbidden
    deleted = user.delete(f"/api/regions/{region['id']}")
    assert (deleted.status, deleted.body) == forbidden
    assert world.api.get("/api/regions", key=False).status == 401


def test_patch_allows_a_cycle_and_delete_protects_fallbacks_and_nodes(world: World) -> None:
    api = world.api
    a, b = world.region("cyc-a"), world.region("cyc-b", fallbackRegionId=None)
    r = api.call(
        "PATCH", f"/api/regions/{a['id']}", {"fallbackRegionId": b["id"], "name": "Cycle A", "serverLimit": 5}
    )
    assert r.status == 200 and (r.body["fallbackRegionId"], r.body["name"], r.body["serverLimit"]) == (
        b["id"],
        "Cycle A",
        5,
    )
    # The admin pages show the fallback by name beside each region.
    assert r.body["fallbackRegion"] == {"id": b["id"], "name": b["name"], "identifier": "cyc-b"}
    assert a["fallbackRegion"] is None
    assert api.call("PATCH", f"/api/regions/{b['id']}", {"fallbackRegionId": a["id"]}).status == 200
    r = api.delete(f"/api/regions/{b['id']}")
    assert r.status == 400 and "fallback" in r.body["error"]
    api.call("PATCH", f"/api/regions/{a['id']}", {"fallbackRegionId": None})
    api.call("PATCH", f"/api/regions/{b['id']}", {"fallbackRegionId": None})
    node = create_node(api, port_block(1), name="pinned-here", regionId=b["id"])
    r = api.delete(f"/api/regions/{b['id']}")
    assert (r.status, r.body) == (400, {"error": "Cannot delete region with assigned nodes"})
    # The Kyro frontend's own route moves a node out of (and into) a region.
    moved = api.call("PATCH", f"/api/nodes/{node['id']}/region", {"regionId": None})
    assert moved.status == 200 and moved.body["regionId"] is None and moved.body["fqdn"] == "127.0.0.1"
    assert api.delete(f"/api/regions/{b['id']}").status == 204
    back = api.call("PATCH", f"/api/nodes/{node['id']}/region", {"regionId": a["id"]})
    assert back.status == 200 and back.body["regionId"] == a["id"]
    assert node["id"] in {n["id"] for n in api.get(f"/api/regions/{a['id']}").body["nodes"]}
    for bad, status in (({}, 400), ({"regionId": "not-a-uuid"}, 400), ({"regionId": b["id"]}, 400)):
        r = api.call("PATCH", f"/api/nodes/{node['id']}/region", bad)
        assert r.status == status and "error" in r.body, (bad, r.body)
    r = api.call("PATCH", "/api/nodes/00000000-0000-0000-0000-000000000000/region", {"regionId": None})
    assert r.status == 404
    user = user_api(world, "not-an-admin")
    assert user.call("PATCH", f"/api/nodes/{node['id']}/region", {"regionId": None}).status == 403
    assert api.call("PATCH", f"/api/nodes/{node['id']}/region", {"regionId": None}).status == 200
    assert api.get(f"/api/regions/{b['id']}").status == 404


def test_nesting_is_one_level_and_allocations_are_listed(world: World) -> None:
    api = world.api
    region = world.region("nested", countryId="DE")
    [node_id] = world.nodes(region, 1, ports_each=3)
    raw = api.get("/api/regions")
    assert "[Circular Reference]" not in str(raw.body)
    detail = api.get(f"/api/regions/{region['id']}").body
    [node] = detail["nodes"]
    assert (
        set(node) == NODE_KEYS and node["id"] == node_id and node["isOnline"] is True and node["lastChecked"]
    )
    assert set(node["region"]) == KEYS - {"nodes"} and node["region"]["identifier"] == "nested"
    assert all(set(a) == ALLOCATION_KEYS for a in node["allocations"]) and len(node["allocations"]) == 3
    assert detail["stats"] == {"serverCount": 0, "nodeCount": 1, "onlineNodeCount": 1, "atCapacity": False}
    status, deployed = world.deploy("nested")
    assert status == 201 and deployed["placement"] == {"region": "nested", "fallbackUsed": False}
    free = api.get(f"/api/regions/{region['id']}/allocations").body
    assert len(free) == 2 and all(
        not a["assigned"] and a["node"] == {"id": node_id, "name": "node-0", "fqdn": "127.0.0.1"}
        for a in free
    )
    detail = api.get(f"/api/regions/{region['id']}").body
    assert detail["stats"]["serverCount"] == 1
    held = [a for a in detail["nodes"][0]["allocations"] if a["assigned"]]
    assert [a["serverId"] for a in held] == [deployed["id"]]


# ---------------------------------------------------------------- placement


def test_fallback_on_server_limit_then_on_capacity(world: World) -> None:
    c = world.region("fb-c")
    b = world.region("fb-b", fallbackRegionId=c["id"])
    a = world.region("fb-a", serverLimit=1, fallbackRegionId=b["id"])
    world.nodes(a, 1)
    world.nodes(b, 1, ram=512)
    [c_node] = world.nodes(c, 1)
    status, first = world.deploy("fb-a", memory=1024)
    assert status == 201 and first["placement"] == {"region": "fb-a", "fallbackUsed": False}
    status, second = world.deploy("fb-a", memory=1024)  # fb-a is at its limit; fb-b's node has 512 MiB only
    assert status == 201 and second["placement"] == {"region": "fb-c", "fallbackUsed": True}
    assert second["nodeId"] == c_node and second["regionId"] == c["id"]
    status, by_id = world.deploy(a["id"], memory=1024)  # the region by id works as well as by identifier
    assert status == 201 and by_id["placement"]["region"] == "fb-c"
    stats = world.api.get(f"/api/regions/{a['id']}").body["stats"]
    assert stats["serverCount"] == 1 and stats["atCapacity"] is True


def test_a_full_cycle_is_refused_quickly_naming_every_region(world: World) -> None:
    api = world.api
    x = world.region("full-x", serverLimit=1)
    y = world.region("full-y", serverLimit=1, fallbackRegionId=x["id"])
    api.call("PATCH", f"/api/regions/{x['id']}", {"fallbackRegionId": y["id"]})
    world.nodes(x, 1)
    world.nodes(y, 1)
    assert world.deploy("full-x")[0] == 201 and world.deploy("full-x")[0] == 201  # one in each
    start = time.monotonic()
    status, body = world.deploy("full-x")
    assert time.monotonic() - start < 2
    assert status == 409
    assert body["error"] == "regionId: no placement: full-x: at serverLimit 1; full-y: at serverLimit 1"


def test_tags_and_resources_are_respected(world: World) -> None:
    region = world.region("tagged")
    [plain] = world.nodes(region, 1, tags="eu")
    [gpu] = world.nodes(region, 1, tags="eu,gpu")
    for _ in range(2):
        status, body = world.deploy("tagged", tags=["gpu"])
        assert status == 201 and body["nodeId"] == gpu
    status, body = world.deploy("tagged", tags=["gpu"])  # the gpu node has two allocations only
    assert status == 409 and body["error"].endswith("tagged: no Ready node with a free allocation free")
    status, body = world.deploy("tagged", tags=["arm"])
    assert (status, body["error"]) == (409, "regionId: no placement: tagged: no Ready node tagged arm")
    status, body = world.deploy("tagged", memory=100_000)
    assert status == 409 and "no Ready node with 100000 MiB free" in body["error"]
    status, body = world.deploy("tagged")
    assert status == 201 and body["nodeId"] == plain


def test_no_reachable_node_is_503_and_unknown_region_400(world: World) -> None:
    region = world.region("dark")
    create_node(world.api, port_block(1), name="never-enrolled", regionId=region["id"])
    status, body = world.deploy("dark")
    assert (status, body["error"]) == (503, "regionId: no placement: dark: no Ready node")
    status, body = world.deploy("no-such-region")
    assert status == 400 and body["field"] == "regionId"


def test_200_deploys_at_once_into_50_allocations(world: World) -> None:
    region = world.region("rush", serverLimit=1000)
    world.nodes(region, 5, ports_each=10)
    results = rush(world, "rush", 200)
    assert sorted(s for s, _ in results).count(201) == 50
    refusals = [b for s, b in results if s != 201]
    assert len(refusals) == 150 and all(s == 409 for s, _ in results if s != 201), {
        (s, b["error"]) for s, b in results if s != 201
    }
    assert all(
        "no Ready node with a free allocation free" in b["error"] or "taken by concurrent" in b["error"]
        for b in refusals
    )
    check_invariants(world, region["id"], expected_live=50)


def test_the_limit_holds_under_the_same_rush(world: World) -> None:
    region = world.region("capped", serverLimit=30)
    world.nodes(region, 5, ports_each=10)
    results = rush(world, "capped", 200)
    assert sorted(s for s, _ in results).count(201) == 30
    check_invariants(world, region["id"], expected_live=30)
    assert world.api.get(f"/api/regions/{region['id']}").body["stats"]["atCapacity"] is True


def rush(world: World, region: str, count: int) -> list[tuple[int, dict[str, Any]]]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(
            pool.map(lambda n: world.deploy(region, name=f"rush-{n}", memory=64, cpu=1), range(count))
        )


def check_invariants(world: World, region_id: str, expected_live: int) -> None:
    query, r = world.coordinator.query, {"r": region_id}
    [(assigned,)] = query(
        "SELECT COUNT(*) FROM allocations a JOIN nodes n ON n.id = a.node_id"
        " WHERE n.region_id = :r AND instance_id IS NOT NULL",
        **r,
    )
    [(live,)] = query(
        "SELECT COUNT(*) FROM instances WHERE region_id = :r AND state NOT IN ('released', 'error')", **r
    )
    [(held,)] = query(
        "SELECT COUNT(DISTINCT instance_id) FROM allocations a JOIN nodes n ON n.id = a.node_id"
        " WHERE n.region_id = :r AND instance_id IS NOT NULL",
        **r,
    )
    [(counter, limit)] = query("SELECT live_count, server_limit FROM regions WHERE id = :r", **r)
    # One port per deploy: as many ports held as instances holding them, so no port serves two.
    assert assigned == held == live == counter == expected_live <= limit
