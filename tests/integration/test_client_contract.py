"""The client dialect's contract (seed 003, FlexMetal's client API): every path under
/api/v1/client/{clientId}/, the order route the document lacks, pages and filters, tags (on servers and
the client's own, with rename and delete reaching every server), release and usage, and who may call what.
A real coordinator and real agent code over an in-memory runtime; the Docker path is in
test_servers_docker.py."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from bench.daemons import wait_for
from tests.integration.sized_fleet import SizedFleet, sized_fleet

SERVER_FIELDS = {
    "uuid", "clientId", "name", "status", "statusMessage", "size", "image", "location", "country",
    "ipAddress", "port", "tags", "memory", "cpu", "disk", "bytesIn", "bytesOut", "createdAt", "deliveredAt",
    "releasedAt",
}  # fmt: skip
USAGE_FIELDS = {
    "uuid", "name", "size", "location", "status", "deliveredAt", "releasedAt", "billableSeconds", "bytesIn",
    "bytesOut",
}  # fmt: skip
MISSING = "00000000-0000-0000-0000-000000000000"


class Client:
    def __init__(self, world: SizedFleet, name: str) -> None:
        self.api, self.id = world.user(name)
        self.base = f"/api/v1/client/{self.id}"

    def order(self, **body: Any) -> dict[str, Any]:
        r = self.api.post(f"{self.base}/server", body)
        assert r.status == 201, r.body
        found: dict[str, Any] = r.body
        return found

    def server(self, uuid: str) -> dict[str, Any]:
        r = self.api.get(f"{self.base}/server/{uuid}")
        assert r.status == 200, r.body
        found: dict[str, Any] = r.body
        return found

    def delivered(self, uuid: str) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: (s := self.server(uuid))["status"] == "delivered" and s, 20, f"{uuid} delivered"
        )
        return found

    def listing(self, query: str = "") -> dict[str, Any]:
        r = self.api.get(f"{self.base}/server{query}")
        assert r.status == 200, r.body
        found: dict[str, Any] = r.body
        return found


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, coordinator_storage: dict[str, Any]
) -> Iterator[SizedFleet]:
    with sized_fleet(tmp_path_factory.mktemp("client"), eu_limit=40, extra=coordinator_storage) as w:
        yield w


@pytest.fixture(scope="module")
def erin(world: SizedFleet) -> Client:
    return Client(world, "erin")


def test_order_answers_the_server_with_every_field(erin: Client) -> None:
    made = erin.order(name="web-1", size="small", location="eu", tags=["web", "prod"])
    assert set(made) == SERVER_FIELDS
    assert (made["clientId"], made["name"], made["size"], made["location"], made["country"]) == (
        erin.id, "web-1", "small", "eu", "DE"
    )  # fmt: skip
    assert made["status"] in {"created", "provisioning", "provisioned", "delivered"}
    assert made["tags"] == ["prod", "web"]
    assert (made["memory"], made["cpu"]) == (512, 50)
    assert made["ipAddress"] == "127.0.0.1" and made["port"] > 0
    delivered = erin.delivered(made["uuid"])
    assert delivered["deliveredAt"] >= delivered["createdAt"] and delivered["releasedAt"] is None
    by_country = erin.order(name="web-2", location="US", tags=["web"])
    assert (by_country["location"], by_country["country"], by_country["size"]) == ("us", "US", "nano")


def test_order_errors_name_the_field(world: SizedFleet, erin: Client) -> None:
    for body, field in (
        ({"size": "galactic"}, "size"),
        ({"location": "atlantis"}, "location"),
        ({"tags": ["no spaces"]}, "tags"),
        ({"tags": [f"t{n}" for n in range(61)]}, "tags"),
        ({"flavour": "x"}, "flavour"),
    ):
        r = erin.api.post(f"{erin.base}/server", body)
        assert r.status == 400 and r.body["field"] == field, (body, r.body)
    frank, _ = world.user("frank")
    assert frank.post(f"{erin.base}/server", {}).status == 403
    # An admin orders with a key of the client's own.
    assert world.api.post(f"{erin.base}/server", {}).status == 403


def test_list_pages_filters_and_totals(erin: Client) -> None:
    for n in range(3):
        erin.order(name=f"batch-{n}", tags=["batch"])
    whole = erin.listing("?limit=100")
    assert whole["total"] == len(whole["data"]) >= 5 and whole["limit"] == 100 and whole["page"] == 1
    assert erin.listing()["limit"] == 15
    paged = [s["uuid"] for p in (1, 2, 3) for s in erin.listing(f"?limit=2&page={p}")["data"]]
    assert paged == [s["uuid"] for s in whole["data"]][:6]
    for s in whole["data"]:
        erin.delivered(s["uuid"])
    encoded = urllib.parse.quote("status=delivered&tag[]=web&tag[]=prod")
    assert [s["name"] for s in erin.listing(f"?filter={encoded}")["data"]] == ["web-1"]
    raw = erin.listing("?status=delivered&tag[]=web")
    assert [s["name"] for s in raw["data"]] == ["web-1", "web-2"] and raw["total"] == 2
    assert erin.listing("?" + urllib.parse.urlencode({"filter": "status=released"}))["total"] == 0
    for query, field in (
        ("?limit=101", "limit"),
        ("?page=0", "page"),
        ("?limit=x", "limit"),
        ("?filter=" + urllib.parse.quote("colour=red"), "filter"),
        ("?filter=" + urllib.parse.quote("status=asleep"), "filter"),
        ("?tag[]=bad%20tag", "filter.tag"),
    ):
        r = erin.api.get(f"{erin.base}/server{query}")
        assert r.status == 400 and r.body["field"] == field, (query, r.body)


def test_get_and_who_may_see(world: SizedFleet, erin: Client) -> None:
    web = erin.listing("?tag[]=prod")["data"][0]
    assert erin.server(web["uuid"])["name"] == "web-1"
    assert erin.api.get(f"{erin.base}/server/{MISSING}").status == 404
    assert erin.api.get(f"{erin.base}/server/not-a-uuid").body["field"] == "serverUuid"
    assert erin.api.get("/api/v1/client/abc/server").status == 400
    grace = Client(world, "grace")
    # Another client's id: 403; another client's server under one's own id: 404.
    assert grace.api.get(f"{erin.base}/server").status == 403
    assert grace.api.get(f"{erin.base}/server/{web['uuid']}").status == 403
    assert grace.api.get(f"{grace.base}/server/{web['uuid']}").status == 404
    assert grace.api.post(f"{grace.base}/server/{web['uuid']}/tag/x").status == 404
    # An admin sees every client; an unknown client is 404 to them.
    assert world.api.get(f"{erin.base}/server").body["total"] >= 5
    assert world.api.get("/api/v1/client/99999/server").status == 404


def test_server_tags_add_remove_and_the_limit(erin: Client) -> None:
    uuid = erin.order(name="tagged")["uuid"]
    path = f"{erin.base}/server/{uuid}/tag"
    r = erin.api.post(f"{path}/fresh:tag-1")
    assert r.status == 200 and r.body["tags"] == ["fresh:tag-1"]
    assert erin.api.post(f"{path}/fresh:tag-1").body["tags"] == ["fresh:tag-1"]  # already there: unchanged
    assert erin.api.get(f"{erin.base}/tag/fresh:tag-1").body["serverUuids"] == [uuid]
    bad = erin.api.post(f"{path}/{'x' * 65}")
    assert bad.status == 400 and bad.body["field"] == "tag"
    assert erin.api.delete(f"{path}/fresh:tag-1").body["tags"] == []
    assert erin.api.delete(f"{path}/fresh:tag-1").status == 404
    # The client keeps the tag after the last server dropped it.
    assert erin.api.get(f"{erin.base}/tag/fresh:tag-1").body["servers"] == 0

    # 70 concurrent adds of distinct tags: exactly 60 hold, the rest are refused.
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda n: erin.api.post(f"{path}/many-{n}").status, range(70)))
    assert sorted(codes) == [200] * 60 + [400] * 10
    assert len(erin.server(uuid)["tags"]) == 60


def test_a_colleague_may_look_but_not_change(world: SizedFleet, erin: Client) -> None:
    colleague, _ = world.user("erins-colleague", organization=erin.id)
    web = erin.listing("?tag[]=prod")["data"][0]["uuid"]
    assert colleague.get(f"{erin.base}/server/{web}").status == 200
    for method, path in (
        ("POST", f"{erin.base}/server/{web}/tag/mine"),
        ("DELETE", f"{erin.base}/server/{web}/tag/prod"),
        ("DELETE", f"{erin.base}/server/{web}"),
    ):
        denied = colleague.call(method, path)
        assert denied.status == 403 and denied.body["field"] == "serverUuid", denied.body
    # Nor through the client's tags, which reach every server carrying them.
    for method, path, body in (
        ("PATCH", f"{erin.base}/tag/prod", {"tag": "hijacked"}),
        ("DELETE", f"{erin.base}/tag/prod", None),
    ):
        denied = colleague.call(method, path, body)
        assert denied.status == 403 and denied.body["field"] == "tag", denied.body
    assert erin.server(web)["tags"] == ["prod", "web"] and erin.server(web)["status"] == "delivered"
    # A tag on none of the owner's servers is the colleague's to change.
    assert colleague.post(f"{erin.base}/tag", {"tag": "colleagues-own"}).status == 200
    assert colleague.call("PATCH", f"{erin.base}/tag/colleagues-own", {"tag": "renamed-own"}).status == 200
    assert colleague.call("DELETE", f"{erin.base}/tag/renamed-own").status in (200, 204)


def test_client_tags_create_list_rename_delete(erin: Client) -> None:
    made = erin.api.post(f"{erin.base}/tag", {"tag": "blue"})
    assert made.status == 200 and made.body["tag"] == "blue" and made.body["servers"] == 0
    assert set(made.body) == {"tag", "servers", "createdAt"}
    assert erin.api.post(f"{erin.base}/tag", {"tag": "blue"}).status == 409
    assert erin.api.post(f"{erin.base}/tag", {"tag": "b l u e"}).body["field"] == "tag"
    listed = erin.api.get(f"{erin.base}/tag?limit=100").body
    assert listed["total"] == len(listed["data"])
    names = [t["tag"] for t in listed["data"]]
    assert names == sorted(names) and {"blue", "web", "prod", "batch"} <= set(names)
    assert next(t for t in listed["data"] if t["tag"] == "web")["servers"] == 2
    firsts = erin.api.get(f"{erin.base}/tag?limit=2&page=2").body
    assert [t["tag"] for t in firsts["data"]] == names[2:4]

    # Rename: every server carrying it carries the new name, in the same statement.
    renamed = erin.api.call("PATCH", f"{erin.base}/tag/web", {"tag": "frontend"})
    assert renamed.status == 200 and renamed.body["tag"] == "frontend" and renamed.body["servers"] == 2
    assert [s["name"] for s in erin.listing("?tag[]=frontend")["data"]] == ["web-1", "web-2"]
    assert erin.listing("?tag[]=web")["total"] == 0
    assert erin.api.get(f"{erin.base}/tag/web").status == 404
    assert erin.api.call("PATCH", f"{erin.base}/tag/frontend", {"tag": "prod"}).status == 409
    assert erin.api.call("PATCH", f"{erin.base}/tag/nope", {"tag": "fine"}).status == 404
    assert erin.api.call("PATCH", f"{erin.base}/tag/frontend", {"tag": "no way"}).body["field"] == "tag"

    # Delete: it leaves every server.
    gone = erin.api.delete(f"{erin.base}/tag/frontend")
    assert gone.status == 204 and gone.body is None
    assert all("frontend" not in s["tags"] for s in erin.listing("?limit=100")["data"])
    assert erin.api.delete(f"{erin.base}/tag/frontend").status == 404


def test_release_then_usage_bills_the_delivered_time(erin: Client) -> None:
    uuid = erin.order(name="billed", tags=["bill"])["uuid"]
    delivered = erin.delivered(uuid)
    time.sleep(3)
    r = erin.api.delete(f"{erin.base}/server/{uuid}")
    assert r.status == 200 and r.body["status"] in {"releasing", "released"}, r.body
    released = wait_for(lambda: (s := erin.server(uuid))["status"] == "released" and s, 20, "released")
    again = erin.api.delete(f"{erin.base}/server/{uuid}")
    assert again.status == 409 and "released" in again.body["error"]

    def usage(**query: Any) -> dict[str, Any]:
        got = erin.api.get(f"{erin.base}/usage?" + urllib.parse.urlencode(query))
        assert got.status == 200, got.body
        found: dict[str, Any] = got.body
        return found

    fmt = "%Y-%m-%d %H:%M:%S"
    start = time.strftime(fmt, time.gmtime(delivered["deliveredAt"] - 60))
    end = time.strftime(fmt, time.gmtime(released["releasedAt"] + 60))
    page = usage(deliveredAt=start, releasedAt=end, limit=100)
    row = next(u for u in page["data"] if u["uuid"] == uuid)
    assert set(row) == USAGE_FIELDS
    assert (row["deliveredAt"], row["releasedAt"], row["size"], row["status"]) == (
        released["deliveredAt"], released["releasedAt"], "nano", "released"
    )  # fmt: skip
    ran = released["releasedAt"] - released["deliveredAt"]
    assert row["billableSeconds"] == ran >= 3
    assert page["total"] == len(page["data"])
    # A window that starts after delivery bills from its start.
    later = time.strftime(fmt, time.gmtime(released["deliveredAt"] + 2))
    clipped_page = usage(deliveredAt=later, limit=100)
    clipped = next(u for u in clipped_page["data"] if u["uuid"] == uuid)
    assert clipped["billableSeconds"] == ran - 2
    assert clipped_page["releasedAt"] >= released["releasedAt"]  # the window's end: now
    # A window after its release does not list it.
    after = time.strftime(fmt, time.gmtime(released["releasedAt"] + 5))
    after_end = time.strftime(fmt, time.gmtime(released["releasedAt"] + 3600))
    assert uuid not in [u["uuid"] for u in usage(deliveredAt=after, releasedAt=after_end, limit=100)["data"]]
    bad = erin.api.get(f"{erin.base}/usage?deliveredAt=yesterday")
    assert bad.status == 400 and bad.body["field"] == "deliveredAt"
    backwards = erin.api.get(
        f"{erin.base}/usage?" + urllib.parse.urlencode({"deliveredAt": end, "releasedAt": start})
    )
    assert backwards.status == 400


def test_every_route_is_in_the_openapi_document(world: SizedFleet) -> None:
    paths = world.api.get("/api/openapi.json").body["paths"]
    base = "/api/v1/client/{clientId}"
    assert set(paths[f"{base}/server"]) == {"get", "post"}
    assert set(paths[f"{base}/server/{{serverUuid}}"]) == {"get", "delete"}
    assert set(paths[f"{base}/server/{{serverUuid}}/tag/{{tag}}"]) == {"post", "delete"}
    assert set(paths[f"{base}/tag"]) == {"get", "post"}
    assert set(paths[f"{base}/tag/{{tag}}"]) == {"get", "patch", "delete"}
    assert set(paths[f"{base}/usage"]) == {"get"}
    query = {p["name"] for p in paths[f"{base}/usage"]["get"]["parameters"] if p["in"] == "query"}
    assert query == {"deliveredAt", "releasedAt", "page", "limit"}
