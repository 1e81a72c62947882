"""Secrets that are shown once and stored only as digests: API keys and node join tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets

API_KEY_PREFIX = "mrg_"
JOIN_TOKEN_SCHEME = "MOORAGE1"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_api_key() -> str:
    """A recognisable prefix (so leaked keys are easy to grep for) and 32 random bytes."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_join_token(ca_sha256: str) -> tuple[str, str, str]:
    """(token id, secret, full token). The token pins the CA, in the manner of k3s:
    MOORAGE1::<sha256 of the CA certificate>::<token id>.<secret>."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return token_id, secret, f"{JOIN_TOKEN_SCHEME}::{ca_sha256}::{token_id}.{secret}"
