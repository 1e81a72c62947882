"""The people door against a real coordinator process: users, login, JWT, API keys, tenancy, the failure
limit and the audit trail."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.daemons import Api, CoordinatorProcess, create_node, port_block, running_coordinator


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    with running_coordinator(tmp_path_factory.mktemp("people") / "coordinator") as proc:
        yield proc


@pytest.fixture(scope="module")
def admin(coordinator: CoordinatorProcess) -> Api:
    return coordinator.api()


def make_user(admin: Api, name: str, **extra: Any) -> dict[str, Any]:
    r = admin.post(
        "/api/auth/create-user",
        {"username": name, "email": f"{name}@example.com", "password": "correct horse", **extra},
    )
    assert r.status == 201, r.body
    user: dict[str, Any] = r.body
    return user


def login(admin: Api, **who: str) -> str:
    r = admin.post("/api/auth/login", {**who, "password": "correct horse"}, key=False)
    assert r.status == 200, r.body
    token: str = r.body["token"]
    return token


def as_bearer(admin: Api, token: str) -> Api:
    return Api(admin.url, None, headers={"Authorization": f"Bearer {token}"})


def test_create_user_answers_as_the_panel_expects(admin: Api) -> None:
    r = admin.post(
        "/api/auth/create-user",
        {"username": "alice", "email": "alice@example.com", "password": "correct horse", "userId": "alice-1"},
    )
    assert (r.status, r.body) == (
        201,
        {"userId": "alice-1", "username": "alice", "email": "alice@example.com", "admin": False},
    )
    again = admin.post(
        "/api/auth/create-user", {"username": "alice", "email": "x@example.com", "password": "12345678"}
    )
    assert again.status == 409 and again.body["field"] == "username"
    again = admin.post(
        "/api/auth/create-user", {"username": "alice2", "email": "ALICE@example.com", "password": "12345678"}
    )
    assert again.status == 409 and again.body["field"] == "email"
    for body, field in [
        ({"username": "al", "email": "a@example.com", "password": "12345678"}, "username"),
        ({"username": "bob", "email": "not-an-email", "password": "12345678"}, "email"),
        ({"username": "bob", "email": "b@example.com", "password": "short"}, "password"),
        ({"username": "bob", "email": "b@example.com"}, "password"),
    ]:
        r = admin.post("/api/auth/create-user", body)
        assert r.status == 400 and r.body["field"] == field, (body, r.body)
    users = admin.get("/api/users").body
    assert "alice" in [u["username"] for u in users]
    assert all(
        set(u) == {"userId", "username", "email", "admin", "organizationId", "createdAt"} for u in users
    )


def test_get_user(admin: Api) -> None:
    make_user(admin, "carol")
    r = admin.post("/api/getUser", {"type": "email", "value": "carol@example.com"})
    assert r.status == 201 and r.body["username"] == "carol" and "password" not in str(r.body)
    assert admin.post("/api/getUser", {"type": "username", "value": "nobody"}).status == 404
    r = admin.post("/api/getUser", {"type": "phone", "value": "1"})
    assert r.status == 400 and r.body["field"] == "type"


def test_login_issues_a_jwt_that_works_everywhere_a_key_does(admin: Api) -> None:
    make_user(admin, "dave")
    token = login(admin, username="dave")
    assert token.startswith("eyJ") and login(admin, email="dave@example.com")
    user = as_bearer(admin, token)
    assert user.get("/api/instances").status == 200
    assert user.get("/api/nodes").status == 200
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert as_bearer(admin, tampered).get("/api/instances").status == 401


def test_a_user_cannot_do_admin_things(admin: Api) -> None:
    make_user(admin, "erin")
    user = as_bearer(admin, login(admin, username="erin"))
    r = user.post(
        "/api/nodes/create", {"name": "n", "ram": 1, "disk": 1, "processor": 1, "address": "a", "port": 1}
    )
    assert r.status == 403
    r = user.post(
        "/api/auth/create-user", {"username": "mallory", "email": "m@example.com", "password": "12345678"}
    )
    assert r.status == 403
    assert user.delete("/api/nodes/delete", {"nodeId": "x"}).status == 403
    assert user.get("/api/keys?all=true").status == 403


def test_api_keys_are_shown_once_work_and_can_be_revoked(admin: Api) -> None:
    make_user(admin, "frank")
    user = as_bearer(admin, login(admin, username="frank"))
    r = user.post("/api/keys", {"name": "ci"})
    assert r.status == 201 and r.body["key"].startswith("mrg_") and r.body["prefix"] == r.body["key"][:8]
    key, key_id = r.body["key"], r.body["id"]
    by_key = Api(admin.url, key)
    assert by_key.get("/api/instances").status == 200
    assert (
        by_key.post(
            "/api/auth/create-user", {"username": "x" * 5, "email": "x@x.io", "password": "p" * 8}
        ).status
        == 403
    )
    assert (
        Api(admin.url, None, headers={"Authorization": f"Bearer {key}"}).get("/api/instances").status == 200
    )
    listed = user.get("/api/keys").body
    assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0]
    # Another user cannot see or revoke it.
    make_user(admin, "grace")
    other = as_bearer(admin, login(admin, username="grace"))
    assert other.get("/api/keys").body == []
    assert other.delete(f"/api/keys/{key_id}").status == 404
    assert user.delete(f"/api/keys/{key_id}").status == 204
    assert by_key.get("/api/instances").status == 401
    assert user.get("/api/keys").body[0]["revokedAt"] is not None


def test_tenancy_hides_other_organizations_and_protects_owners(admin: Api) -> None:
    node = create_node(admin, port_block(3), name="tenancy")
    heidi = make_user(admin, "heidi")
    org = admin.post("/api/getUser", {"type": "username", "value": "heidi"}).body["organizationId"]
    make_user(admin, "ivan", organization=org)  # same organization as heidi
    make_user(admin, "judy")  # an organization of her own
    heidi_api = as_bearer(admin, login(admin, username="heidi"))
    ivan_api = as_bearer(admin, login(admin, username="ivan"))
    judy_api = as_bearer(admin, login(admin, username="judy"))
    deploy = {
        "image": "moorage-test/busybox:latest",
        "memory": 32,
        "cpu": 10,
        "nodeId": node["id"],
        "name": "h",
    }
    r = heidi_api.post("/api/instances/deploy", deploy)
    assert r.status == 201 and r.body["userId"] == heidi["userId"]
    iid = r.body["id"]
    # Deploying for someone else is an admin's privilege.
    assert heidi_api.post("/api/instances/deploy", {**deploy, "user": "alice-1"}).status == 403
    # The panel shows a user only their own instances, even to colleagues of the same organization.
    assert [i["id"] for i in heidi_api.get("/api/instances").body] == [iid]
    assert [i["id"] for i in heidi_api.post("/api/getUserInstance", {"userId": heidi["userId"]}).body] == [
        iid
    ]
    for other in (ivan_api, judy_api):
        assert other.get("/api/instances").body == []
        assert other.post("/api/getInstance", {"id": iid}).status == 400  # as if it did not exist
        assert other.delete("/api/instance/delete", {"id": iid}).status == 400
        assert other.post(f"/api/instances/{iid}/power", {"action": "stop"}).status == 404
    r = ivan_api.post("/api/getUserInstance", {"userId": heidi["userId"]})
    assert r.status == 403 and r.body["field"] == "userId"
    assert judy_api.post("/api/getUserInstance", {"userId": heidi["userId"]}).status == 400  # hidden
    assert [i["id"] for i in admin.post("/api/getUserInstance", {"userId": heidi["userId"]}).body] == [iid]
    assert "heidi" in [u["username"] for u in ivan_api.get("/api/users").body]
    assert "heidi" not in [u["username"] for u in judy_api.get("/api/users").body]
    assert heidi_api.delete("/api/instance/delete", {"id": iid}).status == 201


def test_dedicated_nodes_and_images_serve_only_their_organization(admin: Api) -> None:
    """A node or catalog image dedicated to an organization is seen and used by it alone (an admin sees
    all); the shared fleet and shared images by everyone."""
    make_user(admin, "kim")
    make_user(admin, "lee")
    kim_org = admin.post("/api/getUser", {"type": "username", "value": "kim"}).body["organizationId"]
    kim = as_bearer(admin, login(admin, username="kim"))
    lee = as_bearer(admin, login(admin, username="lee"))
    shared = create_node(admin, port_block(2), name="shared-fleet")
    r = admin.post(
        "/api/nodes/create",
        {
            "name": "kims",
            "ram": 1024,
            "disk": 1024,
            "processor": 1,
            "address": "127.0.0.1",
            "port": 8080,
            "organization": kim_org,
            "allocations": {"ports": ",".join(map(str, port_block(2)))},
        },
    )
    assert r.status == 201 and r.body["organizationId"] == kim_org
    dedicated = r.body
    bad = admin.post(
        "/api/nodes/create",
        {
            **{k: dedicated[k] for k in ("name", "address", "port")},
            "ram": 1,
            "disk": 1,
            "processor": 1,
            "organization": 999999,
        },
    )
    assert (bad.status, bad.body["field"]) == (400, "organization")

    def names(api: Api) -> set[str]:
        return {n["name"] for n in api.get("/api/nodes").body}

    assert {"kims", "shared-fleet"} <= names(kim) and {"kims", "shared-fleet"} <= names(admin)
    assert "shared-fleet" in names(lee) and "kims" not in names(lee)
    deploy = {"image": "moorage-test/busybox:latest", "memory": 32, "cpu": 10, "name": "d"}
    r = lee.post("/api/instances/deploy", {**deploy, "nodeId": dedicated["id"]})
    assert (r.status, r.body["field"]) == (400, "nodeId") and "does not exist" in r.body["error"]
    lee_id = lee.get("/api/users").body[0]["userId"]
    r = admin.post("/api/instances/deploy", {**deploy, "nodeId": dedicated["id"], "user": lee_id})
    assert (r.status, r.body["field"]) == (400, "nodeId") and "dedicated" in r.body["error"]
    assert kim.post("/api/instances/deploy", {**deploy, "nodeId": dedicated["id"]}).status == 201
    assert lee.post("/api/instances/deploy", {**deploy, "nodeId": shared["id"]}).status == 201

    image = {"name": "kims-tool", "image": "moorage-test/busybox:latest", "organization": kim_org}
    assert admin.post("/api/images", image).status == 201
    assert admin.post("/api/images", {**image, "name": "nobodys", "organization": 999999}).body["field"] == (
        "organization"
    )
    assert "kims-tool" in {i["name"] for i in kim.get("/api/catalog/images").body}
    assert "kims-tool" not in {i["name"] for i in lee.get("/api/catalog/images").body}
    r = lee.post("/api/instances/deploy", {**deploy, "image": "kims-tool", "nodeId": shared["id"]})
    assert (r.status, r.body["field"]) == (400, "image")
    assert (
        kim.post("/api/instances/deploy", {**deploy, "image": "kims-tool", "nodeId": shared["id"]}).status
        == 201
    )


def test_region_routes_show_a_tenant_only_what_the_node_routes_show_it(admin: Api) -> None:
    """Nodes dedicated to another organization are absent, and another organization's instances are not
    named in the allocations they hold (which still show as taken)."""
    make_user(admin, "oona")
    make_user(admin, "pete")
    oona_org = admin.post("/api/getUser", {"type": "username", "value": "oona"}).body["organizationId"]
    oona = as_bearer(admin, login(admin, username="oona"))
    pete = as_bearer(admin, login(admin, username="pete"))
    region = admin.post("/api/regions", {"name": "Tenancy", "identifier": "tenancy"}).body
    shared = create_node(admin, port_block(2), name="tenancy-shared", regionId=region["id"])
    dedicated = create_node(
        admin, port_block(2), name="tenancy-oonas", regionId=region["id"], organization=oona_org
    )
    deploy = {"image": "moorage-test/busybox:latest", "memory": 16, "cpu": 1, "name": "t"}
    on_shared = oona.post("/api/instances/deploy", {**deploy, "nodeId": shared["id"]}).body["id"]
    assert oona.post("/api/instances/deploy", {**deploy, "nodeId": dedicated["id"]}).status == 201

    def nodes_seen(api: Api) -> dict[str, dict[str, Any]]:
        listed = next(r for r in api.get("/api/regions").body if r["id"] == region["id"])
        single = api.get(f"/api/regions/{region['id']}").body
        assert single["nodes"] == listed["nodes"]
        return {n["id"]: n for n in listed["nodes"]}

    seen = nodes_seen(pete)
    assert set(seen) == {shared["id"]}, "a node dedicated to another organization was shown"
    taken = [a for a in seen[shared["id"]]["allocations"] if a["assigned"]]
    assert len(taken) == 1 and taken[0]["serverId"] is None, taken
    free = pete.get(f"/api/regions/{region['id']}/allocations").body
    assert {a["node"]["id"] for a in free} == {shared["id"]} and len(free) == 1
    assert dedicated["name"] not in str(pete.get("/api/regions").body)

    mine = nodes_seen(oona)
    assert set(mine) == {shared["id"], dedicated["id"]}
    assert on_shared in {a["serverId"] for a in mine[shared["id"]]["allocations"]}
    assert set(nodes_seen(admin)) == {shared["id"], dedicated["id"]}


def test_failed_logins_are_limited_per_name_and_client(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The coordinator behind a TLS proxy (here: this test, trusted at 127.0.0.1): failures count per
    forwarded client and login name, so an attacker slows down only the names they try from their own
    address; nobody else is refused, and a valid key or token never is."""
    proc = CoordinatorProcess(
        tmp_path_factory.mktemp("limit") / "coordinator",
        extra={"auth": {"trusted_proxies": ["127.0.0.1/32"]}},
    )
    proc.start()
    try:
        api = proc.api()
        make_user(api, "kim")
        make_user(api, "lee")
        attacker = {"X-Forwarded-For": "198.51.100.66"}
        kim_at_home = {"X-Forwarded-For": "203.0.113.7"}

        def login(who: str, password: str, headers: dict[str, str]) -> int:
            body = {"username": who, "password": password}
            return api.post("/api/auth/login", body, key=False, headers=headers).status

        for _ in range(10):
            assert login("kim", "wrong password", attacker) == 401
        r = api.post("/api/auth/login", {"username": "kim", "password": "x"}, key=False, headers=attacker)
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        # The attacker's address no longer gets to try kim's password, even the right one...
        assert login("kim", "correct horse", attacker) == 429
        # ...while kim, from her own address behind the same proxy, logs in; so does lee from the attacker's.
        assert login("kim", "correct horse", kim_at_home) == 200
        assert login("lee", "correct horse", attacker) == 200
        # A name that does not exist answers as a real one does (no telling them apart by the limit).
        for _ in range(10):
            assert login("nobody", "x", attacker) == 401
        assert login("nobody", "x", attacker) == 429
        # Wrong keys count per client; the right key works from anywhere, the attacker's address included.
        for _ in range(10):
            assert api.get("/api/nodes", key="mrg_wrong", headers=attacker).status == 401
        assert api.get("/api/nodes", key="mrg_wrong", headers=attacker).status == 429
        assert api.get("/api/nodes", headers=attacker).status == 200
        assert login("lee", "correct horse", attacker) == 200
    finally:
        proc.stop()


def test_every_mutating_call_is_audited(coordinator: CoordinatorProcess, admin: Api) -> None:
    make_user(admin, "leo")
    admin.post(
        "/api/auth/create-user", {"username": "leo", "email": "leo2@example.com", "password": "12345678"}
    )
    Api(admin.url, "mrg_bogus").post("/api/keys", {"name": "x"})
    rows = coordinator.query(
        "SELECT user_id, method, path, status, client, request_id FROM audit_log ORDER BY id"
    )
    created = [r for r in rows if r[2] == "/api/auth/create-user"]
    assert ("admin", "POST", "/api/auth/create-user", 201) in [r[:4] for r in created]
    assert ("admin", "POST", "/api/auth/create-user", 409) in [r[:4] for r in created]
    assert (None, "POST", "/api/keys", 401) in [r[:4] for r in rows]
    assert all(r[4] and r[5] for r in rows)
    assert not [r for r in rows if r[1] == "GET"]
