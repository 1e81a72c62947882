"""The cluster key, and the secrets every coordinator of one database must share.

A JWT signed by one coordinator must verify on another, a value sealed by one must open on another, and
agents enrolled through one must trust (and be trusted by) all: so the CA, the sealing key and the JWT secret
are the cluster's, not a data directory's. They live in the database, each sealed with a key derived from
the cluster key, which never enters the database: a copied database or backup alone opens none of them.
Each coordinator reads the cluster key from a file (``storage.cluster_key_file``, --cluster-key-file) or the
environment (MOORAGE_CLUSTER_KEY).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from coordinator.security.pki import CertificateAuthority
from coordinator.security.sealing import Sealer, SealingError

#: The shared secrets by the names their files have in a data directory.
NAMES = ("ca.key", "ca.pem", "sealing.key", "jwt.secret")
MIN_KEY_CHARS = 32
GENERATE = "generate one with `openssl rand -base64 32`"


class ClusterKeyError(ValueError):
    """The cluster key is missing, malformed or not the one the database's secrets were sealed with: a
    configuration error (the daemon exits 78)."""


class ClusterKey:
    def __init__(self, material: str) -> None:
        material = material.strip()
        if len(material) < MIN_KEY_CHARS:
            raise ClusterKeyError(f"the cluster key must be at least {MIN_KEY_CHARS} characters; {GENERATE}")
        # A derived key, so the material may be any text of enough entropy (base64, hex, a passphrase file).
        derived = HKDF(hashes.SHA256(), 32, salt=None, info=b"moorage cluster secrets v1").derive(
            material.encode()
        )
        self._sealer = Sealer(derived)

    def seal(self, name: str, value: bytes) -> str:
        return self._sealer.seal(value, f"cluster:{name}")

    def seal_all(self, values: Mapping[str, bytes]) -> dict[str, str]:
        return {name: self.seal(name, values[name]) for name in NAMES}

    def open(self, name: str, value: str) -> bytes:
        try:
            return self._sealer.open(value, f"cluster:{name}")
        except SealingError as exc:
            raise ClusterKeyError(
                "the cluster key does not open the cluster secrets in the database (it is not the key the "
                "first coordinator was started with)"
            ) from exc


def read_cluster_key(path: Path | None, environment: Mapping[str, str] = os.environ) -> ClusterKey | None:
    """The file wins over MOORAGE_CLUSTER_KEY; neither: None (secrets stay in the data directory)."""
    if path is not None:
        try:
            return ClusterKey(path.read_text())
        except OSError as exc:
            raise ClusterKeyError(f"cannot read the cluster key file {path}: {exc.strerror}") from exc
    material = environment.get("MOORAGE_CLUSTER_KEY", "")
    return ClusterKey(material) if material else None


def new_secrets() -> dict[str, bytes]:
    ca = CertificateAuthority.create("Moorage coordinator CA")
    return {
        "ca.key": ca.key_pem,
        "ca.pem": ca.cert_pem,
        "sealing.key": AESGCM.generate_key(bit_length=256),
        "jwt.secret": secrets.token_bytes(32),
    }


def first_secrets(data_dir: Path) -> tuple[dict[str, bytes], list[str]]:
    """What the first coordinator with a cluster key puts into the database: its data directory's secrets
    and new ones for what it lacks; and the names of those that came from the directory."""
    found = directory_secrets(data_dir)
    return {**new_secrets(), **found}, sorted(found)


def directory_secrets(data_dir: Path) -> dict[str, bytes]:
    """What a data directory holds of the shared secrets (a coordinator that ran alone before): the first
    coordinator with a cluster key takes them into the database, so its agents, sealed values and tokens
    stay valid."""
    found = {name: (data_dir / name).read_bytes() for name in NAMES if (data_dir / name).is_file()}
    if ("ca.key" in found) != ("ca.pem" in found):
        raise ClusterKeyError(f"{data_dir} holds only one of ca.key and ca.pem")
    return found
