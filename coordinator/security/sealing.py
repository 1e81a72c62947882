"""Secrets the coordinator must give back later (per-server TLS keys, server secrets) are stored sealed:
AES-256-GCM with a key that lives only in the data directory (``sealing.key``, mode 0600), never in the
database, so a copied database or backup alone reveals none of them."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "sealed1:"  # a format version, so the scheme can change without guessing


class SealingError(ValueError):
    """A sealed value that this key cannot open (another data directory's key, or tampered)."""


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def load_or_create(cls, directory: Path) -> Sealer:
        path = directory / "sealing.key"
        if not path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(AESGCM.generate_key(bit_length=256))
        key = path.read_bytes()
        if len(key) != 32:
            raise SealingError(f"{path} is not a 32-byte key")
        return cls(key)

    def seal(self, plaintext: bytes, context: str) -> str:
        """``context`` (e.g. the owning row's id) is bound in: a value moved to another row will not open."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext, context.encode())
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, value: str, context: str) -> bytes:
        if not value.startswith(PREFIX):
            raise SealingError("not a sealed value")
        raw = base64.b64decode(value[len(PREFIX) :])
        try:
            return self._aead.decrypt(raw[:12], raw[12:], context.encode())
        except InvalidTag as exc:
            raise SealingError("the value does not open with this data directory's key") from exc
