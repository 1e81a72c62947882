"""Per-server TLS material and the sealing of secrets at rest (issue 7's groundwork)."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest

from coordinator.security.pki import issue_server_tls
from coordinator.security.sealing import Sealer, SealingError


def test_sealed_values_open_only_with_their_key_and_context(tmp_path: Path) -> None:
    sealer = Sealer.load_or_create(tmp_path)
    assert stat.S_IMODE((tmp_path / "sealing.key").stat().st_mode) == 0o600
    sealed = sealer.seal(b"-----BEGIN PRIVATE KEY-----", "server-1")
    assert b"PRIVATE" not in sealed.encode() and sealed != sealer.seal(
        b"-----BEGIN PRIVATE KEY-----", "server-1"
    )
    assert Sealer.load_or_create(tmp_path).open(sealed, "server-1") == b"-----BEGIN PRIVATE KEY-----"
    with pytest.raises(SealingError):
        sealer.open(sealed, "server-2")  # moved to another row
    with pytest.raises(SealingError):
        Sealer.load_or_create(tmp_path / "other").open(sealed, "server-1")  # another data directory


def test_a_servers_certificates_complete_a_mutual_tls_handshake(tmp_path: Path) -> None:
    """The service presents the server certificate and requires one from its own CA; a client holding the
    returned files gets in by the server's name; a client with another server's files does not."""
    tls = issue_server_tls("agent-abcd1234", "127.0.0.1")
    other = issue_server_tls("agent-zzzz9999", "127.0.0.1")
    for name, data in [("ca.pem", tls.ca_cert), ("cert.pem", tls.tls_cert), ("key.pem", tls.tls_key)]:
        (tmp_path / name).write_bytes(data)
    (tmp_path / "other-cert.pem").write_bytes(other.tls_cert)
    (tmp_path / "other-key.pem").write_bytes(other.tls_key)

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tmp_path / "ca.pem")
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    outcomes: list[str] = []

    def serve(times: int) -> None:
        for _ in range(times):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    assert tls_conn.getpeercert()  # the client proved it holds a certificate of this CA
                    tls_conn.sendall(b"hello")
                    outcomes.append("ok")
            except (ssl.SSLError, OSError):
                outcomes.append("refused")

    thread = threading.Thread(target=serve, args=(2,), daemon=True)
    thread.start()

    def connect(cert: str, key: str) -> bytes:
        ctx = ssl.create_default_context(cafile=tmp_path / "ca.pem")
        ctx.load_cert_chain(tmp_path / cert, tmp_path / key)
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            ctx.wrap_socket(raw, server_hostname="agent-abcd1234") as conn,
        ):
            try:
                return conn.recv(100)
            except (ssl.SSLError, OSError):
                return b""  # the server refused the certificate (TLS 1.3 says so after the handshake)

    assert connect("cert.pem", "key.pem") == b"hello"
    assert connect("other-cert.pem", "other-key.pem") == b""
    thread.join(5)
    listener.close()
    assert outcomes == ["ok", "refused"]
