"""The cluster's secrets: created once in the database, opened by every coordinator with the cluster key,
refused with a clear error without it or with another. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from coordinator.security.cluster import ClusterKey, ClusterKeyError, read_cluster_key
from coordinator.service.bootstrap import load_secrets
from coordinator.store import cluster as cluster_store
from coordinator.store.engine import Store

KEY = "k" * 20 + "0123456789abcdef"
OTHER = "z" * 40


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = Store.open(store_url)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


async def test_a_second_coordinator_with_the_key_shares_the_firsts_secrets(
    store: Store, tmp_path: Path
) -> None:
    first = await load_secrets(store, ClusterKey(KEY), tmp_path / "a", 1.0)
    second = await load_secrets(store, ClusterKey(KEY), tmp_path / "b", 2.0)
    assert (first.kept_in, second.kept_in) == ("database", "database")
    assert first.ca.sha256 == second.ca.sha256
    assert second.sealer.open(first.sealer.seal(b"server secret", "i-1"), "i-1") == b"server secret"
    token, _ = first.signer(60).issue("u-1")
    assert second.signer(60).subject(token) == "u-1"
    # Nothing of them is written to either data directory, and nothing in the database is in the clear.
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    async with store.read() as conn:
        sealed = await cluster_store.read_sealed(conn)
    assert sorted(sealed) == ["ca.key", "ca.pem", "jwt.secret", "sealing.key"]
    assert all(v.startswith("sealed1:") for v in sealed.values())
    assert not any("PRIVATE KEY" in v for v in sealed.values())


async def test_a_wrong_or_missing_key_is_refused_by_name(store: Store, tmp_path: Path) -> None:
    await load_secrets(store, ClusterKey(KEY), tmp_path / "a", 1.0)
    with pytest.raises(ClusterKeyError, match="does not open the cluster secrets"):
        await load_secrets(store, ClusterKey(OTHER), tmp_path / "b", 2.0)
    with pytest.raises(ClusterKeyError, match="MOORAGE_CLUSTER_KEY"):
        await load_secrets(store, None, tmp_path / "c", 3.0)
    assert not (tmp_path / "c").exists()  # a refused start leaves no data-directory secrets behind


async def test_the_first_keyed_start_takes_in_a_lone_coordinators_secrets(
    store: Store, tmp_path: Path
) -> None:
    """A coordinator that ran alone (secrets in its data directory) restarted with a key: its CA, sealed
    values and tokens stay valid, and a second coordinator gets the same."""
    alone = await load_secrets(store, None, tmp_path / "a", 1.0)
    assert alone.kept_in == "data directory" and (tmp_path / "a" / "ca.key").is_file()
    sealed = alone.sealer.seal(b"tls key", "i-1")
    token, _ = alone.signer(60).issue("u-1")
    keyed = await load_secrets(store, ClusterKey(KEY), tmp_path / "a", 2.0)
    joined = await load_secrets(store, ClusterKey(KEY), tmp_path / "b", 3.0)
    for s in (keyed, joined):
        assert s.ca.sha256 == alone.ca.sha256
        assert s.sealer.open(sealed, "i-1") == b"tls key"
        assert s.signer(60).subject(token) == "u-1"


async def test_coordinators_starting_at_once_create_the_secrets_once(store_url: str, tmp_path: Path) -> None:
    stores = [Store.open(store_url) for _ in range(3)]
    try:
        await asyncio.gather(*(s.migrate() for s in stores))
        found = await asyncio.gather(
            *(load_secrets(s, ClusterKey(KEY), tmp_path / f"c{n}", 1.0) for n, s in enumerate(stores))
        )
        assert len({s.ca.sha256 for s in found}) == 1
    finally:
        for s in stores:
            await s.close()


def test_the_key_comes_from_a_file_or_the_environment_and_must_be_long_enough(tmp_path: Path) -> None:
    assert read_cluster_key(None, {}) is None
    path = tmp_path / "cluster.key"
    path.write_text(KEY + "\n")
    from_file = read_cluster_key(path, {"MOORAGE_CLUSTER_KEY": OTHER})  # the file wins
    from_env = read_cluster_key(None, {"MOORAGE_CLUSTER_KEY": KEY})
    assert from_file is not None and from_env is not None
    assert from_env.open("x", from_file.seal("x", b"v")) == b"v"  # the same key, trailing newline or not
    with pytest.raises(ClusterKeyError, match="at least 32 characters"):
        read_cluster_key(None, {"MOORAGE_CLUSTER_KEY": "short"})
    with pytest.raises(ClusterKeyError, match="cannot read the cluster key file"):
        read_cluster_key(tmp_path / "missing", {})


def test_a_value_sealed_for_one_secret_does_not_open_as_another() -> None:
    key = ClusterKey(KEY)
    with pytest.raises(ClusterKeyError):
        key.open("jwt.secret", key.seal("sealing.key", b"x" * 32))
