"""The servers and client dialects end to end on real parts: a coordinator and an agent as subprocesses and
a real Docker engine. A server provisioned through the servers API runs a mutual-TLS service (openssl
s_server from the test image) on its port with the files mounted at /etc/moorage/tls/, and a client holding
the returned certificates completes the handshake; one without them is refused. A server ordered through
the client API is tagged, filtered, released and billed."""

from __future__ import annotations

import base64
import socket
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from bench.daemons import SIZES, TEST_IMAGE, wait_for
from tests.dockerenv import require_docker, serves
from tests.integration.sized_fleet import SERVERS, SizedFleet, sized_fleet

pytestmark = pytest.mark.docker

#: A mutual-TLS echo (it answers each line reversed) on the server's port, from the mounted files.
TLS_ECHO = {
    "name": "tls-echo",
    "image": TEST_IMAGE,
    "description": "openssl s_server requiring a client certificate from the server's own CA",
    "startup": [
        "sh",
        "-c",
        'exec openssl s_server -quiet -accept "$SERVER_PORT" -cert /etc/moorage/tls/cert.pem'
        " -key /etc/moorage/tls/key.pem -CAfile /etc/moorage/tls/ca.pem -Verify 1 -verify_return_error -rev",
    ],
    # openssl as PID 1 has no TERM handler; nothing to flush.
    "stop_signal": "SIGKILL",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SizedFleet]:
    require_docker()
    tmp = tmp_path_factory.mktemp("servers-docker")
    images = tmp / "images.yaml"
    images.write_text(yaml.safe_dump({"images": [TLS_ECHO]}))
    extra = {
        "catalog": {"images": str(images), "sizes": str(SIZES)},
        "servers": {**SERVERS, "image": "tls-echo"},
    }
    with sized_fleet(tmp, docker=("eu",), extra=extra) as w:
        yield w


def pem(value: str) -> bytes:
    return base64.b64decode(value)


def container_of(instance_id: str) -> Any:
    client = docker.from_env()
    try:
        found = client.containers.list(all=True, filters={"label": f"moorage.instance={instance_id}"})
        return found[0] if found else None
    finally:
        client.close()


def echo(port: int, name: str, files: dict[str, Path] | None, line: bytes = b"hello\n") -> bytes:
    ctx = ssl.create_default_context(cafile=str(files["ca"]) if files else None)
    if files is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_cert_chain(str(files["cert"]), str(files["key"]))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        tls.sendall(line)
        return tls.recv(100)


def test_a_server_serves_mutual_tls_with_its_own_certificates(world: SizedFleet, tmp_path: Path) -> None:
    made = world.api.post("/api/servers")
    assert made.status == 200, made.body
    name, iid = made.body["name"], made.body["id"]
    running = wait_for(
        lambda: (s := world.api.get(f"/api/servers/{name}").body)["state"] == "running" and s, 30, "running"
    )
    port = int(running["address"].rsplit(":", 1)[1])

    # The three files, read-only at /etc/moorage/tls/, and the secret in the environment.
    container = container_of(iid)
    assert container is not None
    for filename, field in (("ca.pem", "ca_cert"), ("cert.pem", "tls_cert"), ("key.pem", "tls_key")):
        code, out = container.exec_run(["cat", f"/etc/moorage/tls/{filename}"])
        assert code == 0 and out == pem(running[field]), filename
    code, out = container.exec_run(["sh", "-c", "echo x > /etc/moorage/tls/ca.pem"])
    assert code != 0 and b"Read-only" in out
    code, out = container.exec_run(["sh", "-c", 'printf %s "$MOORAGE_SECRET"'])
    assert code == 0 and out.decode() == running["secret"]

    files = {}
    for key, field in (("ca", "ca_cert"), ("cert", "tls_cert"), ("key", "tls_key")):
        files[key] = tmp_path / f"{key}.pem"
        files[key].write_bytes(pem(running[field]))
    # The service may still be binding right after the container started.
    answer = wait_for(lambda: _try(lambda: echo(port, name, files)), 15, "the TLS echo to answer")
    assert answer == b"olleh\n"
    # Without a client certificate the service refuses; with another server's CA the client refuses it.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        echo(port, name, None)
    other = world.api.post("/api/servers", {"name": "other-server", "image": TEST_IMAGE})
    assert other.status == 200, other.body
    stranger = dict(files, ca=tmp_path / "other-ca.pem")
    stranger["ca"].write_bytes(pem(other.body["ca_cert"]))
    with pytest.raises(ssl.SSLCertVerificationError):
        echo(port, name, stranger)

    # Terminate: shutdown, then stopped, and the container and its files are gone.
    down = world.api.delete(f"/api/servers/{name}")
    assert down.status == 200 and down.body["state"] == "shutdown"
    wait_for(lambda: world.api.get(f"/api/servers/{name}").body["state"] == "stopped", 30, "stopped")
    assert container_of(iid) is None
    assert not (world.tmp / "agent-eu" / "files" / iid).exists()
    assert world.api.delete("/api/servers/other-server").status == 200


def _try(attempt: Any) -> Any:
    try:
        return attempt()
    except (OSError, ssl.SSLError):
        return None


def test_order_tag_filter_rename_release_and_bill(world: SizedFleet) -> None:
    api, client = world.user("heidi")
    base = f"/api/v1/client/{client}"
    r = api.post(f"{base}/server", {"name": "shop", "location": "DE", "image": TEST_IMAGE, "tags": ["web"]})
    assert r.status == 201, r.body
    uuid = r.body["uuid"]
    delivered = wait_for(
        lambda: (s := api.get(f"{base}/server/{uuid}").body)["status"] == "delivered" and s, 30, "delivered"
    )
    assert (delivered["location"], delivered["country"]) == ("eu", "DE")
    # Running is what the engine says the moment it started the container; httpd listens a moment later.
    wait_for(lambda: serves(delivered["port"]), 10, "the page served")
    with urllib.request.urlopen(f"http://127.0.0.1:{delivered['port']}/", timeout=5) as page:
        assert page.read() == b"moorage-test-ok\n"

    assert api.post(f"{base}/server/{uuid}/tag/shop:eu").body["tags"] == ["shop:eu", "web"]
    query = "?filter=" + urllib.parse.quote("status=delivered&tag[]=web&tag[]=shop:eu")
    assert [s["uuid"] for s in api.get(f"{base}/server{query}").body["data"]] == [uuid]
    assert api.get(f"{base}/server?status=provisioned&tag[]=web").body["total"] == 0
    assert api.call("PATCH", f"{base}/tag/web", {"tag": "storefront"}).status == 200
    assert api.get(f"{base}/server/{uuid}").body["tags"] == ["shop:eu", "storefront"]

    time.sleep(2)
    released = api.delete(f"{base}/server/{uuid}")
    assert released.status == 200, released.body
    final = wait_for(
        lambda: (s := api.get(f"{base}/server/{uuid}").body)["status"] == "released" and s, 30, "released"
    )
    assert container_of(uuid) is None
    rows = api.get(f"{base}/usage").body["data"]
    row = next(u for u in rows if u["uuid"] == uuid)
    assert (row["deliveredAt"], row["releasedAt"]) == (final["deliveredAt"], final["releasedAt"])
    assert row["billableSeconds"] == final["releasedAt"] - final["deliveredAt"] >= 2
    assert row["bytesOut"] > 0  # the page we fetched left through the container's interface
