"""The tenancy matrix, generated from the OpenAPI document: every operation, with organization B's API key
and with B's JWT, aimed at organization A's resources (its instances through each dialect, its server by
name, its client id, server and tag, its VPN node number, its user and key, its dedicated node and image).
Every attempt is refused or shows nothing of A; A's rows in the database are the same afterwards. A route
added later is in the matrix without anyone writing a line, because the matrix walks the document."""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.daemons import Api, create_node, port_block, wait_state
from tests.compat.conftest import send_json
from tests.integration.sized_fleet import SizedFleet, sized_fleet

#: What a refusal looks like (404 hides existence; 400 is the panel document's "not found").
REFUSED = {400, 401, 403, 404, 405, 409, 415, 422}
#: Public routes show the same to everyone.
PUBLIC = {("GET", "/"), ("GET", "/version"), ("GET", "/api/health"), ("GET", "/api/openapi.json")}


@dataclass
class World:
    fleet: SizedFleet
    alice: Api
    org_a: int
    #: Path parameter values that name A's resources, by path prefix and name.
    params: dict[str, str]
    #: Body field values that name A's resources.
    fields: dict[str, Any]
    #: Strings that must never reach B: A's ids, names, secrets and keys.
    secrets: set[str] = field(default_factory=set)
    bob_key: str = ""
    bob_jwt: str = ""


def param_for(path: str, name: str, world: World) -> str:
    """A's resource for a path parameter, by what the path is about."""
    for prefix, key in (
        ("/api/instances/", "instance"),
        ("/api/nodes/", "node"),
        ("/api/regions/", "region"),
        ("/api/keys/", "key"),
        ("/api/servers/", "server"),
        ("/api/images/", "image"),
        ("/api/webhooks/", "webhook"),
    ):
        if path.startswith(prefix) and name in ("id", "name"):
            return world.params[key]
    return world.params.get(name, "x")


def fill(path: str, world: World, match: re.Match[str]) -> str:
    return param_for(path, match.group(1), world)


def bodies_for(schema: dict[str, Any], components: dict[str, Any], world: World) -> list[dict[str, Any]]:
    """Requests that name A's things: one with every field that can name one, and one for each such
    field alone (so a check that refuses one field first cannot hide what another would have reached)."""
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    plain: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if name in schema.get("required", []):
            kinds = {p.get("type") for p in prop.get("anyOf", [prop])}
            plain[name] = 1 if "integer" in kinds else False if kinds == {"boolean"} else "x1"
    aimed = [n for n in schema.get("properties", {}) if n in world.fields]
    every = {**plain, **{n: world.fields[n] for n in aimed}}
    return [every] + [{**plain, n: world.fields[n]} for n in aimed if len(aimed) > 1]


def _as_json(value: Any) -> dict[str, Any]:
    found = json.loads(value) if isinstance(value, str) else value
    return found if isinstance(found, dict) else {}


def a_rows(fleet: SizedFleet, org: int) -> dict[str, list[tuple[Any, ...]]]:
    """A's rows, as the database has them (heartbeat-written columns left out)."""
    q = {
        "instances": "SELECT id, name, state, owner_id, node_id, suspended, released, pending_release, "
        "expires_at, redeploy_max_count FROM instances WHERE organization_id = :org ORDER BY id",
        "users": "SELECT id, username, email, admin, password_hash FROM users WHERE organization_id = :org",
        "keys": "SELECT k.id, k.name, k.revoked_at FROM api_keys k JOIN users u ON u.id = k.user_id "
        "WHERE u.organization_id = :org ORDER BY k.id",
        "nodes": "SELECT id, name, address, region_id, maintenance, cert_serial, organization_id, "
        "cpu_count FROM nodes WHERE organization_id = :org ORDER BY id",
        "allocations": "SELECT a.id, a.instance_id, a.alias, a.notes FROM allocations a JOIN nodes n "
        "ON n.id = a.node_id WHERE n.organization_id = :org ORDER BY a.id",
        "servers": "SELECT s.name, s.secret FROM servers s JOIN instances i ON i.id = s.instance_id "
        "WHERE i.organization_id = :org ORDER BY s.name",
        "tags": "SELECT tag FROM client_tags WHERE organization_id = :org ORDER BY tag",
        "instance_tags": "SELECT t.instance_id, t.tag FROM instance_tags t JOIN instances i ON "
        "i.id = t.instance_id WHERE i.organization_id = :org ORDER BY 1, 2",
        "webhooks": "SELECT id, url, description, kinds, secret FROM webhooks WHERE organization_id = :org",
    }
    rows = {table: fleet.coordinator.query(sql, org=org) for table, sql in q.items()}
    # The catalog's definitions are JSON: which organization one belongs to is read here, not in SQL.
    images = fleet.coordinator.query("SELECT name, definition FROM catalog_images ORDER BY name")
    rows["images"] = [(name, d) for name, d in images if _as_json(d).get("organization") == org]
    return rows


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with sized_fleet(tmp_path_factory.mktemp("tenancy"), eu_limit=10) as fleet:
        admin = fleet.api
        alice, org_a = fleet.user("alice")
        eu = fleet.nodes["eu"]
        # A's resources, one through each door.
        inst = alice.post(
            "/api/instances/deploy",
            {"image": "busybox-httpd", "memory": 32, "cpu": 5, "name": "alices-panel", "nodeId": eu["id"]},
        ).body
        server = alice.post("/api/servers", {"name": "alices-server"}).body
        ordered = alice.post(f"/api/v1/client/{org_a}/server", {"name": "alices-order", "tags": ["alices"]})
        vpn = alice.get("/api/v2/nodes/").body["data"]["results"]
        key = alice.post("/api/keys", {"name": "alices-key"}).body
        hook = alice.post("/api/webhooks", {"url": "https://alices-hooks.example.net/in", "description": "d"})
        assert hook.status == 201, hook.body
        dedicated = create_node(
            admin, port_block(2), name="alices-node", organization=org_a, regionId=fleet.regions["eu"]
        )
        image = {"name": "alices-image", "image": "moorage-test/busybox:latest", "organization": org_a}
        assert admin.post("/api/images", image).status == 201
        for iid in (inst["id"], server["id"], ordered.body["uuid"]):
            wait_state(admin, iid, "running")  # settled: the snapshots must see only what B does
        me = next(u for u in alice.get("/api/users").body if u["username"] == "alice")
        w = World(
            fleet,
            alice,
            org_a,
            params={
                "instance": inst["id"],
                "node": dedicated["id"],
                "region": fleet.regions["eu"],
                "key": key["id"],
                "server": "alices-server",
                "image": "alices-image",
                "webhook": hook.body["id"],
                "allocationId": dedicated["allocationList"][0]["id"],
                "clientId": str(org_a),
                "serverUuid": ordered.body["uuid"],
                "tag": "alices",
                "node_id": str(vpn[0]["id"]),
            },
            fields={
                "id": inst["id"],
                "userId": me["userId"],
                "user": me["userId"],
                "nodeId": dedicated["id"],
                "type": "username",
                "value": "alice",
                "username": "alice",
                "name": "renamed-by-b",
                "tag": "renamed-by-b",
                "action": "stop",
                "image": "alices-image",
                "imagename": "alices-image",
            },
        )
        w.secrets |= {
            inst["id"],
            me["userId"],
            "alice@example.com",
            dedicated["id"],
            "alices-node",
            key["id"],
        }
        w.secrets |= {server["id"], "alices-server", server["secret"], server["tls_key"], server["ca_key"]}
        w.secrets |= {ordered.body["uuid"], "alices-order", "alices-image", "alices-panel", "alices"}
        w.secrets |= {a["id"] for a in dedicated["allocationList"]}
        w.secrets |= {hook.body["id"], hook.body["secret"], "alices-hooks.example.net"}
        bob, _ = fleet.user("bob")
        w.bob_jwt = bob.headers["Authorization"].removeprefix("Bearer ")
        w.bob_key = bob.post("/api/keys", {"name": "bobs-key"}).body["key"]
        yield w


def operations(world: World) -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    doc = world.fleet.api.get("/api/openapi.json").body
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if (method.upper(), path) not in PUBLIC:
                yield method.upper(), path, op, doc["components"]["schemas"]


@pytest.mark.parametrize("credential", ["key", "jwt"])
def test_another_organization_is_refused_or_shown_nothing_of_a(world: World, credential: str) -> None:
    before = a_rows(world.fleet, world.org_a)
    token = world.bob_key if credential == "key" else world.bob_jwt
    headers = {"Authorization": f"Bearer {token}"}
    outcome: Counter[str] = Counter()
    leaks: list[str] = []
    for method, path, op, components in operations(world):
        filled = re.sub(r"{(\w+)}", functools.partial(fill, path, world), path)
        schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        payloads = bodies_for(schema, components, world) if schema is not None else [None]
        for payload in payloads:
            r = send_json(world.fleet.api.url, method, filled, headers, payload)
            outcome["attempts"] += 1
            outcome["refused" if r.status in REFUSED else "answered"] += 1
            # Any answer, refusals too, may echo what was asked; nothing else of A may be in it.
            asked = filled + json.dumps(payload)
            found = sorted(s for s in world.secrets if s and s in r.text and s not in asked)
            if found or r.status >= 500:
                leaks.append(f"{method} {filled} {payload} -> {r.status}: {found or r.text[:200]}")
    print(json.dumps({"credential": credential, **outcome, "leaks": len(leaks)}))
    assert leaks == [], "\n".join(leaks)
    assert outcome["attempts"] >= 70 and outcome["refused"] > outcome["answered"]
    assert a_rows(world.fleet, world.org_a) == before, "organization B changed organization A's rows"
