"""The servers dialect's contract (seed 002, the Drone autoscaler's server API): every field, unix-second
times, base64 PEM, the lifecycle's state names, names and their conflicts, placement with fallback,
terminate (shutdown → stopping → stopped, and force on a failed server), and keys sealed at rest. A real
coordinator and real agent code over an in-memory runtime; the Docker path (files in the container, a
mutual-TLS handshake) is test_servers_docker.py."""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography import x509

from bench.daemons import Api, wait_for
from tests.integration.sized_fleet import SizedFleet, sized_fleet

SERVER_FIELDS = {
    "id", "provider", "state", "name", "image", "region", "size", "platform", "address", "capacity", "secret",
    "error", "ca_key", "ca_cert", "tls_key", "tls_cert", "created", "updated", "started", "stopped",
}  # fmt: skip


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, coordinator_storage: dict[str, Any]
) -> Iterator[SizedFleet]:
    with sized_fleet(tmp_path_factory.mktemp("servers"), eu_limit=2, extra=coordinator_storage) as w:
        yield w


def server(api: Api, name: str) -> dict[str, Any]:
    r = api.get(f"/api/servers/{name}")
    assert r.status == 200, r.body
    found: dict[str, Any] = r.body
    return found


def wait_server(api: Api, name: str, state: str, timeout: float = 20) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        lambda: (s := server(api, name))["state"] == state and s, timeout, f"server {name} {state}"
    )
    return found


def pem(field: str) -> bytes:
    return base64.b64decode(field, validate=True)


def test_provision_with_defaults_has_every_field(world: SizedFleet) -> None:
    r = world.api.post("/api/servers")
    assert r.status == 200, r.body
    made = r.body
    assert set(made) == SERVER_FIELDS
    assert re.fullmatch(r"agent-[a-z0-9]{8}", made["name"])
    assert made["state"] in {"pending", "creating", "created", "staging", "running"}
    assert (made["provider"], made["platform"], made["image"], made["size"], made["region"]) == (
        "moorage", "linux/amd64", "busybox-httpd", "nano", "eu"
    )  # fmt: skip
    assert made["capacity"] == 1
    assert made["address"].startswith("127.0.0.1:") and int(made["address"].split(":")[1]) in range(1, 65536)
    assert made["error"] == "" and made["stopped"] == 0 and made["started"] == 0
    assert all(isinstance(made[k], int) for k in ("created", "updated", "started", "stopped"))
    assert len(made["secret"]) >= 32
    running = wait_server(world.api, made["name"], "running")
    assert running["started"] >= running["created"] > 1_700_000_000
    assert running["id"] == made["id"] and running["secret"] == made["secret"]
    # Base64 PEM; the certificate names the server and its node's address, issued by its own CA.
    ca = x509.load_pem_x509_certificate(pem(made["ca_cert"]))
    cert = x509.load_pem_x509_certificate(pem(made["tls_cert"]))
    assert pem(made["ca_key"]).startswith(b"-----BEGIN") and pem(made["tls_key"]).startswith(b"-----BEGIN")
    assert cert.issuer == ca.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert made["name"] in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)


def test_names_are_unique_and_checked(world: SizedFleet) -> None:
    r = world.api.post("/api/servers", {"name": "runner-one", "size": "small"})
    assert r.status == 200, r.body
    assert (r.body["name"], r.body["size"], r.body["capacity"]) == ("runner-one", "small", 1)
    again = world.api.post("/api/servers", {"name": "runner-one"})
    assert again.status == 409 and again.body["field"] == "name" and "runner-one" in again.body["message"]
    for body, field in (
        ({"name": "no spaces"}, "name"),
        ({"size": "galactic"}, "size"),
        ({"region": "atlantis"}, "region"),
        ({"image": "NOT A REFERENCE"}, "image"),
        ({"colour": "blue"}, "colour"),
        ({"name": 7}, "name"),
    ):
        bad = world.api.post("/api/servers", body)
        assert bad.status == 400, (body, bad.body)
        assert bad.body["field"] == field and bad.body["message"].startswith(f"{field}:"), bad.body
    assert world.api.get("/api/servers/no-such-server").status == 404


def test_one_name_under_concurrent_provisions(world: SizedFleet) -> None:
    """The database holds the name unique: of 10 concurrent provisions with one name, one wins."""
    with ThreadPoolExecutor(10) as pool:
        answers = list(
            pool.map(lambda _: world.api.post("/api/servers", {"name": "race", "region": "us"}), range(10))
        )
    assert sorted(a.status for a in answers) == [200] + [409] * 9, [a.body for a in answers]
    assert all(a.body["field"] == "name" for a in answers if a.status == 409)
    assert [s["name"] for s in world.api.get("/api/servers").body].count("race") == 1
    assert world.api.delete("/api/servers/race").status == 200


def test_region_chain_falls_back_and_says_where(world: SizedFleet) -> None:
    # eu holds 2 (serverLimit): the first test's and runner-one. The next goes to us, and says so.
    r = world.api.post("/api/servers", {"name": "spill", "region": "eu"})
    assert r.status == 200, r.body
    assert r.body["region"] == "us"
    by_country = world.api.post("/api/servers", {"name": "by-country", "region": "US"})
    assert by_country.status == 200 and by_country.body["region"] == "us", by_country.body


def test_list_is_per_organization(world: SizedFleet) -> None:
    listed = world.api.get("/api/servers")
    assert listed.status == 200
    names = [s["name"] for s in listed.body]
    assert {"runner-one", "spill", "by-country"} <= set(names)
    assert [s["created"] for s in listed.body] == sorted(s["created"] for s in listed.body)
    dave, _ = world.user("dave")
    assert dave.get("/api/servers").body == []
    assert dave.get("/api/servers/runner-one").status == 404
    assert dave.delete("/api/servers/runner-one").status == 404
    own = dave.post("/api/servers", {"name": "daves"})
    assert own.status == 200, own.body
    assert [s["name"] for s in dave.get("/api/servers").body] == ["daves"]


def test_terminate_goes_shutdown_stopping_stopped(world: SizedFleet) -> None:
    wait_server(world.api, "by-country", "running")
    r = world.api.delete("/api/servers/by-country")
    assert r.status == 200, r.body
    assert set(r.body) == SERVER_FIELDS and r.body["state"] == "shutdown"
    seen = set()

    def stopped() -> bool:
        s = server(world.api, "by-country")
        seen.add(s["state"])
        return bool(s["state"] == "stopped" and s["stopped"] > 0)

    wait_for(stopped, 20, "the server stopped", interval=0.01)
    assert seen <= {"shutdown", "stopping", "stopped"}
    # Terminating a terminated server changes nothing.
    again = world.api.delete("/api/servers/by-country")
    assert again.status == 200 and again.body["state"] == "stopped"
    assert world.api.delete("/api/servers/never-was").status == 404
    # A stopped server's name is free for a new one, which then answers to it.
    old_id = again.body["id"]
    reused = world.api.post("/api/servers", {"name": "by-country", "region": "us"})
    assert reused.status == 200 and reused.body["id"] != old_id, reused.body
    assert server(world.api, "by-country")["id"] == reused.body["id"]
    assert [s["name"] for s in world.api.get("/api/servers").body].count("by-country") == 1


def test_force_removes_a_failed_server(world: SizedFleet) -> None:
    r = world.api.post("/api/servers", {"name": "broken", "region": "us", "image": "moorage-test/missing:1"})
    assert r.status == 200, r.body
    failed = wait_server(world.api, "broken", "error")
    assert "does not exist" in failed["error"]
    gone = world.api.delete("/api/servers/broken?force=true")
    assert gone.status == 204 and gone.body is None
    assert world.api.get("/api/servers/broken").status == 404
    # The name is free again.
    assert world.api.post("/api/servers", {"name": "broken", "region": "us"}).status == 200
    assert world.api.delete("/api/servers/broken?force=maybe").status == 400


def test_colleagues_see_certificates_but_not_keys_or_secret(world: SizedFleet) -> None:
    users = world.api.get("/api/users").body
    admin_org = next(u["organizationId"] for u in users if u["admin"])
    colleague, _ = world.user("colleague", organization=admin_org)
    seen = colleague.get("/api/servers/runner-one")
    assert seen.status == 200, seen.body
    assert (seen.body["secret"], seen.body["ca_key"], seen.body["tls_key"]) == ("", "", "")
    assert seen.body["ca_cert"] == server(world.api, "runner-one")["ca_cert"]
    assert all(s["tls_key"] == "" for s in colleague.get("/api/servers").body)
    denied = colleague.delete("/api/servers/runner-one")
    assert denied.status == 403 and denied.body["field"] == "name"


def test_keys_and_secret_are_sealed_at_rest(world: SizedFleet) -> None:
    made = server(world.api, "runner-one")
    (row,) = world.coordinator.query(
        "SELECT secret, ca_key, tls_key, tls_cert FROM servers WHERE name = 'runner-one'"
    )
    secret, ca_key, tls_key, tls_cert = row
    assert all(v.startswith("sealed1:") for v in (secret, ca_key, tls_key))
    assert made["secret"] not in secret and b"PRIVATE KEY" not in (ca_key + tls_key).encode()
    assert tls_cert.encode() == pem(made["tls_cert"])
    assert (world.coordinator.data_dir / "sealing.key").stat().st_mode & 0o777 == 0o600


def test_the_agent_gets_the_files_and_the_secret(world: SizedFleet) -> None:
    made = server(world.api, "runner-one")
    files = wait_for(
        lambda: [p for p in (world.tmp / "agents").glob(f"fake-agent-*/files/{made['id']}/0") if p.is_dir()],
        10,
        "the server's files on its agent",
    )[0]
    assert (files / "ca.pem").read_bytes() == pem(made["ca_cert"])
    assert (files / "cert.pem").read_bytes() == pem(made["tls_cert"])
    assert (files / "key.pem").read_bytes() == pem(made["tls_key"])
    assert (files / "key.pem").stat().st_mode & 0o777 == 0o444


def test_every_route_is_in_the_openapi_document(world: SizedFleet) -> None:
    paths = world.api.get("/api/openapi.json").body["paths"]
    assert set(paths["/api/servers"]) == {"get", "post"}
    assert set(paths["/api/servers/{name}"]) == {"get", "delete"}
    force = [p for p in paths["/api/servers/{name}"]["delete"]["parameters"] if p["in"] == "query"]
    assert [p["name"] for p in force] == ["force"]
