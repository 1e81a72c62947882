"""Suite-wide checks. The secret scan: after every test has run, no response body the suite received may
contain a secret — not a password hash, key digest, join-token digest, CA or node private key, the JWT
secret, the sealing key, a sealed value or the admin key — and a secret shown once at creation (API key,
join token, JWT) may appear in one response only."""

from __future__ import annotations

import base64
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.daemons import DATA_DIRS, RESPONSES
from tests.databases import store_url

__all__ = ["store_url"]  # a fixture for every test module

SHOWN_ONCE = re.compile(
    r"(MOORAGE[12]::[0-9a-f]{64}::(?:[^:]+:\d+(?:,[^:]+:\d+)*::[^:]+:\d+::)?[0-9a-f]+\.[\w-]+|mrg_[\w-]{43}|eyJ[\w-]+\.[\w-]+\.[\w-]+)"
)


def _pem_body(path: Path) -> list[str]:
    """The base64 lines of a PEM private key: any one of them in a response is a leak."""
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]


def known_secrets(data_dirs: list[Path]) -> dict[str, str]:
    found: dict[str, str] = {}
    for d in data_dirs:
        for name in ("ca.key", "node.key"):
            for line in _pem_body(d / name):
                found[line] = f"{d / name}"
        if (d / "admin.key").exists():
            found[(d / "admin.key").read_text().strip()] = f"{d}/admin.key"
        for name in ("jwt.secret", "sealing.key"):
            if (d / name).exists():
                raw = (d / name).read_bytes()
                found[raw.hex()] = found[base64.b64encode(raw).decode()] = f"{d}/{name}"
        db = d / "moorage.db"
        if db.exists():
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                for (value,) in conn.execute(
                    "SELECT password_hash FROM users WHERE password_hash IS NOT NULL"
                ):
                    found[value] = "a password hash"
                for (value,) in conn.execute("SELECT digest FROM api_keys"):
                    found[value] = "an API key digest"
                for (value,) in conn.execute("SELECT digest FROM join_tokens"):
                    found[value] = "a join token digest"
            conn.close()
    return found


def scan(responses: list[str], data_dirs: list[Path]) -> list[str]:
    problems = []
    secrets = known_secrets(data_dirs)
    for body in responses:
        for secret, where in secrets.items():
            if len(secret) >= 16 and secret in body:
                problems.append(f"{where} appears in a response: {body[:200]}")
    # Sealed values (server keys and secrets at rest) are opened before any answer carries them.
    problems += [f"a sealed value appears in a response: {b[:200]}" for b in responses if "sealed1:" in b]
    seen: dict[str, int] = {}
    for body in responses:
        for token in set(SHOWN_ONCE.findall(body)):
            seen[token] = seen.get(token, 0) + 1
    problems += [f"a secret shown once appears in {n} responses: {t[:24]}…" for t, n in seen.items() if n > 1]
    return problems


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_response() -> Iterator[None]:
    yield
    problems = scan(RESPONSES, DATA_DIRS)
    assert not problems, "\n".join(problems[:20])
