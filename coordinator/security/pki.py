"""The coordinator's own certificate authority: it signs the gRPC server certificate and every node's
client certificate, so agents and coordinator trust each other through one pinned CA and nothing else."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_OU = "moorage-node"


class CertificateRequestError(ValueError):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Create with mode 0600 from the first byte, never chmod after the fact."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    """IP literals as IP entries, the rest as DNS names (internationalised ones in their A-label form; a
    name that has none is left out rather than failing the certificate)."""
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        try:
            entries.append(x509.DNSName(name if name.isascii() else name.encode("idna").decode("ascii")))
        except (UnicodeError, ValueError):
            continue
    return x509.SubjectAlternativeName(entries)


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    pem: bytes
    serial: str
    not_after: float


class CertificateAuthority:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.sha256 = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    @classmethod
    def create(
        cls, common_name: str, lifetime: dt.timedelta = dt.timedelta(days=3650)
    ) -> CertificateAuthority:
        """A new self-signed CA, in memory (the caller decides where its key lives)."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load_or_create(cls, directory: Path) -> CertificateAuthority:
        key_path, cert_path = directory / "ca.key", directory / "ca.pem"
        if key_path.exists() and cert_path.exists():
            return cls.from_pem(key_path.read_bytes(), cert_path.read_bytes(), str(key_path))
        ca = cls.create("Moorage coordinator CA")
        directory.mkdir(parents=True, exist_ok=True)
        _write_private(key_path, ca.key_pem)
        cert_path.write_bytes(ca.cert_pem)
        return ca

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes, where: str = "the CA key") -> CertificateAuthority:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{where} is not an EC private key")
        return cls(key, x509.load_pem_x509_certificate(cert_pem))

    @property
    def key_pem(self) -> bytes:
        return _pem_key(self.key)

    def _issue(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        names: list[str],
        usage: list[x509.ObjectIdentifier],
        lifetime: dt.timedelta,
    ) -> IssuedCertificate:
        now = _now()
        serial = x509.random_serial_number()
        not_after = now + lifetime
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(_san(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return IssuedCertificate(
            cert.public_bytes(serialization.Encoding.PEM), format(serial, "x"), not_after.timestamp()
        )

    def server_credentials(self, names: list[str]) -> tuple[bytes, bytes]:
        """A fresh gRPC server key and chain (leaf + CA, so agents can pin the CA from the handshake)."""
        key, cert = self.issue_key_pair(names, dt.timedelta(days=365), [ExtendedKeyUsageOID.SERVER_AUTH])
        return key, cert + self.cert_pem

    def issue_key_pair(
        self, names: list[str], lifetime: dt.timedelta, usage: list[x509.ObjectIdentifier]
    ) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) for ``names``, the first also its common name."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "moorage")])
        return _pem_key(key), self._issue(subject, key.public_key(), names, usage, lifetime).pem

    def sign_node(self, csr_pem: bytes, node_id: str, lifetime: dt.timedelta) -> IssuedCertificate:
        """Sign an agent's CSR. Only its public key is taken: the subject is ours (the node id), never the
        agent's, so a node cannot ask for another node's identity."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CertificateRequestError(f"the CSR is not valid PEM: {exc}") from exc
        if not csr.is_signature_valid:
            raise CertificateRequestError("the CSR signature does not verify")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise CertificateRequestError("the CSR must carry an EC (P-256) public key")
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, NODE_OU),
            ]
        )
        return self._issue(
            subject, public_key, [f"{node_id}.node.moorage"], [ExtendedKeyUsageOID.CLIENT_AUTH], lifetime
        )


def node_id_from_certificate(pem: bytes) -> tuple[str, str] | None:
    """(node id, serial) from a client certificate this CA issued, or None if it is not a node's."""
    cert = x509.load_pem_x509_certificate(pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if not cn or not ou or ou[0].value != NODE_OU:
        return None
    return str(cn[0].value), format(cert.serial_number, "x")


@dataclass(frozen=True, slots=True)
class ServerTls:
    """A server's own CA and one certificate (PEM) that serves and authenticates as the server's name and
    address: the service inside presents it and requires it back, so only holders of these files talk."""

    ca_key: bytes
    ca_cert: bytes
    tls_key: bytes
    tls_cert: bytes


def issue_server_tls(name: str, address: str, lifetime: dt.timedelta = dt.timedelta(days=3650)) -> ServerTls:
    # A common name holds 64 characters; the name is in the certificate's alternative names whole.
    ca = CertificateAuthority.create(f"Moorage server CA for {name}"[:64], lifetime)
    names = [name] + ([address] if address and address != name else [])
    key, cert = ca.issue_key_pair(
        names, lifetime, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    return ServerTls(_pem_key(ca.key), ca.cert_pem, key, cert)
