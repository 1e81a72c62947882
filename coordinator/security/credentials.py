"""Passwords (argon2id) and session tokens (JWT, HS256 with a secret generated into the data directory)."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
ALGORITHM = "HS256"
# A fixed hash to verify against when the user does not exist, so a login takes the same time either way.
_DUMMY_HASH = _hasher.hash("moorage-no-such-user")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2 and value.startswith("eyJ")


class JwtSigner:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    @staticmethod
    def load_or_create_secret(data_dir: Path) -> bytes:
        path = data_dir / "jwt.secret"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
        return path.read_bytes()

    def issue(self, user_id: str) -> tuple[str, float]:
        now = int(time.time())
        exp = now + self.ttl_s
        # jti: two logins in one second must not yield the same token (and it names a token for revocation).
        claims = {"sub": user_id, "iat": now, "exp": exp, "jti": secrets.token_hex(8)}
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        return token, float(exp)

    def subject(self, token: str) -> str | None:
        """The user id of a valid, unexpired token signed by us; None otherwise. The algorithm is pinned,
        so a token claiming "none" or another algorithm is refused."""
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM], options={"require": ["exp", "iat", "sub"]}
            )
        except jwt.PyJWTError:
            return None
        sub = claims.get("sub")
        return sub if isinstance(sub, str) else None
