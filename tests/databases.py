"""The databases store tests run on: a SQLite file, and a fresh database in the throw-away PostgreSQL that
`make test-env` starts (tests/env/ensure-postgres.sh). A store test takes the ``store_url`` fixture and runs
once on each; where no PostgreSQL answers, that variant skips outside CI and fails in CI."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.databases import drop_database, fresh_database, postgres_url


def require_postgres() -> str:
    url = postgres_url()
    if url is None:
        why = "no test PostgreSQL (run tests/env/ensure-postgres.sh as root)"
        if os.environ.get("MOORAGE_REQUIRE_POSTGRES") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    base = require_postgres()
    url = await fresh_database(base)
    try:
        yield url
    finally:
        await drop_database(base, url)
