"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from coordinator.store.engine import Store
from tests.unit.factories import seeded_store


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """A seeded store (user "u" of organization 1, node "n1" with allocations), on SQLite and on
    PostgreSQL (tests/databases.py). A module that needs another store defines its own."""
    s = await seeded_store(store_url)
    try:
        yield s
    finally:
        await s.close()
