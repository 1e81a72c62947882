"""Secrets that are shown once and stored only as digests: API keys and node join tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

API_KEY_PREFIX = "mrg_"
JOIN_TOKEN_SCHEME = "MOORAGE2"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_api_key() -> str:
    """A recognisable prefix (so leaked keys are easy to grep for) and 32 random bytes."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_join_token(ca_sha256: str, sessions: Sequence[str], enroll: str) -> tuple[str, str, str]:
    """(token id, secret, full token). The token pins the CA, in the manner of k3s, and says where to go, so
    it is all an agent needs: MOORAGE2::<sha256 of the CA certificate>::<session HOST:PORT, comma-separated,
    every live coordinator's>::<enrollment HOST:PORT>::<token id>.<secret>. (Agents still read MOORAGE1,
    the same without the two addresses.)"""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    where = f"{','.join(sessions)}::{enroll}"
    return token_id, secret, f"{JOIN_TOKEN_SCHEME}::{ca_sha256}::{where}::{token_id}.{secret}"
