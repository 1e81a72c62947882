"""The agent's identity: enroll once with a join token, then keep key and certificates in the data
directory so restarts need nothing but the directory.

Before the token's secret leaves the host, the coordinator's CA (read from the enrollment port's TLS
handshake) must hash to the value pinned in the token; otherwise the agent stops (exit 78), because a
mismatch means the address or the token is wrong, and retrying would not help.
"""

from __future__ import annotations

import _ssl
import asyncio
import base64
import calendar
import hashlib
import json
import os
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from agent.config import is_address
from protos import moorage_pb2 as pb
from protos import moorage_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

SERVER_NAME = "moorage-coordinator"  # the name every coordinator certificate carries
EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus stops a bad token from looping


class EnrollmentRefused(Exception):
    """Permanent: wrong CA, or a token the coordinator will never accept. The agent exits 78."""


class CoordinatorUnreachable(Exception):
    """Transient: retried with back-off."""


@dataclass(frozen=True, slots=True)
class JoinToken:
    ca_sha256: str
    token_id: str
    secret: str
    #: Where the coordinators take sessions and where the issuing one enrolls (MOORAGE2 tokens carry them).
    coordinators: tuple[str, ...] = ()
    enroll_address: str = ""

    @classmethod
    def parse(cls, raw: str) -> JoinToken:
        parts = _fields(raw.strip())
        sessions: tuple[str, ...] = ()
        enroll = ""
        if len(parts) == 5 and parts[0] == "MOORAGE2":
            sessions = tuple(a.strip() for a in parts[2].split(",") if a.strip())
            enroll = parts[3].strip()
            parts = [parts[0], parts[1], parts[4]]
            if not sessions or not all(map(is_address, (*sessions, enroll))):
                parts = []
        elif len(parts) != 3 or parts[0] != "MOORAGE1":
            parts = []
        if len(parts) != 3 or "." not in parts[2] or len(parts[1]) != 64:
            raise EnrollmentRefused(
                "the join token is malformed (expected "
                "MOORAGE2::<ca-sha256>::<HOST:PORT,...>::<HOST:PORT>::<id>.<secret>)"
            )
        token_id, _, secret = parts[2].partition(".")
        return cls(parts[1].lower(), token_id, secret, sessions, enroll)


def _fields(raw: str) -> list[str]:
    """The token split at "::", except inside brackets (an IPv6 address in a HOST:PORT holds "::")."""
    fields, depth, start, i = [], 0, 0, 0
    while i < len(raw):
        if raw[i] == "[":
            depth += 1
        elif raw[i] == "]":
            depth = max(depth - 1, 0)
        elif depth == 0 and raw.startswith("::", i):
            fields.append(raw[start:i])
            start = i = i + 2
            continue
        i += 1
    return [*fields, raw[start:]]


@dataclass(frozen=True, slots=True)
class Identity:
    node_id: str
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)

    def not_after(self) -> float:
        return validity(self.cert_pem)[1]

    def not_before(self) -> float:
        return validity(self.cert_pem)[0]

    def renew_at(self) -> float:
        """Two thirds into the certificate's life."""
        start, end = self.not_before(), self.not_after()
        return start + (end - start) * 2 / 3

    def with_certificate(self, cert_pem: bytes) -> Identity:
        return Identity(self.node_id, self.key_pem, cert_pem, self.ca_pem)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(data_dir: Path) -> Identity | None:
    meta = data_dir / "node.json"
    if not meta.exists():
        return None
    node_id = json.loads(meta.read_text())["node_id"]
    return Identity(
        node_id,
        (data_dir / "node.key").read_bytes(),
        (data_dir / "node.pem").read_bytes(),
        (data_dir / "ca.pem").read_bytes(),
    )


def save(data_dir: Path, identity: Identity) -> None:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(data_dir / "node.key", identity.key_pem, 0o600)
    _write(data_dir / "node.pem", identity.cert_pem, 0o644)
    _write(data_dir / "ca.pem", identity.ca_pem, 0o644)
    _write(data_dir / "node.json", json.dumps({"node_id": identity.node_id}).encode(), 0o644)


def csr_for(key_pem: bytes) -> bytes:
    """A CSR for an existing key: renewal keeps the key, so only the certificate file changes (atomically)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return _csr(key)


def save_coordinators(data_dir: Path, addresses: Sequence[str]) -> None:
    """The session addresses an enrollment learned, so later starts need only the data directory."""
    _write(data_dir / "coordinators.json", json.dumps({"coordinators": list(addresses)}).encode(), 0o644)


def load_coordinators(data_dir: Path) -> tuple[str, ...]:
    path = data_dir / "coordinators.json"
    if not path.exists():
        return ()
    return tuple(str(a) for a in json.loads(path.read_text()).get("coordinators", []))


def save_certificate(data_dir: Path, cert_pem: bytes) -> None:
    _write(data_dir / "node.pem", cert_pem, 0o644)


def new_key_and_csr() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, _csr(key)


def _csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Only enrollment and renewal need cryptography (~8 MiB resident once imported): imported here, so
    # an enrolled agent's steady state never loads it.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname()[:64] or "agent")])
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def fetch_ca(address: str, timeout: float = 10.0) -> bytes:
    """The CA certificate the enrollment port presents (last of its chain), unverified: the caller pins it.
    Blocking; run it in a thread."""
    host, _, port = address.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
        ):
            # Private before 3.13 (where it became SSLSocket.get_unverified_chain), present since 3.10.
            chain = tls._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    except OSError as exc:
        raise CoordinatorUnreachable(
            f"cannot reach the coordinator's enrollment port {address}: {exc}"
        ) from exc
    if not chain:
        raise EnrollmentRefused(f"{address} presented no certificate chain")
    return ssl.DER_cert_to_PEM_cert(chain[-1].public_bytes(_ssl.ENCODING_DER)).encode()


def ca_sha256(ca_pem: bytes) -> str:
    return hashlib.sha256(_first_der(ca_pem)).hexdigest()


def _first_der(pem: bytes) -> bytes:
    """The DER bytes of the first certificate in ``pem``."""
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    start = pem.find(begin)
    stop = pem.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError("no PEM certificate")
    return base64.b64decode(b"".join(pem[start + len(begin) : stop].split()), validate=True)


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at ``at``."""
    tag, length, at = der[at], der[at + 1], at + 2
    if length & 0x80:
        count = length & 0x7F
        length, at = int.from_bytes(der[at : at + count], "big"), at + count
    if at + length > len(der):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _asn1_time(tag: int, text: str) -> float:
    if tag == 0x17:  # UTCTime, YYMMDDHHMMSSZ: 50-99 are 19xx (RFC 5280 4.1.2.5.1)
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    elif tag != 0x18:  # GeneralizedTime, YYYYMMDDHHMMSSZ
        raise ValueError(f"not an ASN.1 time (tag {tag:#x})")
    return float(calendar.timegm(time.strptime(text, "%Y%m%d%H%M%SZ")))


def validity(cert_pem: bytes) -> tuple[float, float]:
    """(notBefore, notAfter) of the first certificate in ``cert_pem``, as Unix times, read from its DER
    (RFC 5280 4.1): the session checks them often, and cryptography would cost the agent ~8 MiB for it."""
    der = _first_der(cert_pem)
    _, at, _ = _element(der, 0)  # Certificate
    _, at, _ = _element(der, at)  # tbsCertificate
    tag, _, end = _element(der, at)
    if tag == 0xA0:  # [0] version
        at = end
    for _ in range(3):  # serialNumber, signature, issuer
        at = _element(der, at)[2]
    _, at, _ = _element(der, at)  # validity
    tag, start, end = _element(der, at)
    not_before = _asn1_time(tag, der[start:end].decode("ascii"))
    tag, start, stop = _element(der, end)
    return not_before, _asn1_time(tag, der[start:stop].decode("ascii"))


async def enroll(address: str, token: JoinToken, agent_version: str) -> Identity:
    ca_pem = await asyncio.to_thread(fetch_ca, address)
    if ca_sha256(ca_pem) != token.ca_sha256:
        raise EnrollmentRefused(
            f"the coordinator at {address} presents a CA whose SHA-256 is {ca_sha256(ca_pem)}, "
            f"not {token.ca_sha256} as the join token pins; refusing to send the token"
        )
    key_pem, csr_pem = new_key_and_csr()
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    async with grpc.aio.secure_channel(
        address, grpc.ssl_channel_credentials(ca_pem), options=options
    ) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        try:
            reply = await stub.Enroll(
                pb.EnrollRequest(
                    token_id=token.token_id,
                    token_secret=token.secret,
                    hostname=socket.gethostname(),
                    csr_pem=csr_pem,
                    agent_version=agent_version,
                ),
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
                raise EnrollmentRefused(f"the coordinator refused the join token: {exc.details()}") from exc
            raise CoordinatorUnreachable(f"enrollment failed: {exc.code().name}: {exc.details()}") from exc
    return Identity(reply.node_id, key_pem, bytes(reply.certificate_pem), bytes(reply.ca_certificate_pem))
