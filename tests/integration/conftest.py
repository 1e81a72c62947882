"""Fixtures the integration tests share."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from bench.databases import drop_database, fresh_database
from tests.databases import require_postgres


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    """The Docker engine, to see what really runs (a test that needs it calls require_docker first)."""
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh, empty database in the test PostgreSQL, dropped after the test."""
    base = require_postgres()
    url = asyncio.run(fresh_database(base))
    try:
        yield url
    finally:
        asyncio.run(drop_database(base, url))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def coordinator_storage(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A contract module runs against a coordinator on each store: its config's ``storage`` section (none:
    SQLite in the data directory; a fresh database in the test PostgreSQL)."""
    if request.param == "sqlite":
        yield {}
        return
    base = require_postgres()
    url = asyncio.run(fresh_database(base))
    try:
        yield {"storage": {"database": url}}
    finally:
        asyncio.run(drop_database(base, url))
