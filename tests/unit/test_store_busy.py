"""What the database gives up on is StoreBusy (the API's 503 with Retry-After, test_http_errors.py);
statement-only work a deadlock chose as its victim runs again by itself. On a real PostgreSQL: SQLite
serializes writers and never deadlocks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import text

from bench.databases import drop_database, fresh_database
from coordinator.domain.failures import StoreBusy
from coordinator.store.engine import Sql, Store
from tests.databases import require_postgres


@pytest.fixture
async def postgres() -> AsyncIterator[Store]:
    base = require_postgres()
    url = await fresh_database(base)
    store = Store.open(url)
    try:
        async with store.write() as conn:
            await conn.execute(text("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)"))
            await conn.execute(text("INSERT INTO t VALUES (1, 0), (2, 0)"))
        yield store
    finally:
        await store.close()
        await drop_database(base, url)


async def test_a_deadlocks_victim_is_store_busy_and_writes_nothing(postgres: Store) -> None:
    """Two transactions take two rows in opposite orders: PostgreSQL breaks the deadlock by failing one,
    which reaches its caller as StoreBusy with its writes undone; the other commits."""
    both_hold_one = asyncio.Barrier(2)

    async def lock(first: int, second: int) -> None:
        async with postgres.write() as conn:
            await conn.execute(text("UPDATE t SET v = v + 1 WHERE id = :id"), {"id": first})
            await both_hold_one.wait()
            await conn.execute(text("UPDATE t SET v = v + 10 WHERE id = :id"), {"id": second})

    outcomes = await asyncio.gather(lock(1, 2), lock(2, 1), return_exceptions=True)
    busy = [o for o in outcomes if isinstance(o, StoreBusy)]
    assert len(busy) == 1 and outcomes.count(None) == 1, outcomes
    assert "40P01" in str(busy[0])
    async with postgres.read() as conn:
        rows = sorted(tuple(r) for r in await conn.execute(text("SELECT id, v FROM t")))
    assert sorted(v for _, v in rows) == [1, 10]  # the winner's two updates only


async def test_statement_work_a_deadlock_fails_runs_again(postgres: Store) -> None:
    tries: list[int] = []

    def work(sql: Sql) -> Sequence[Any]:
        sql("UPDATE t SET v = v + 1 WHERE id = 1")
        tries.append(1)
        if len(tries) == 1:  # as the database does to a deadlock's victim
            sql("DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$")
        return sql("SELECT v FROM t WHERE id = 1")

    assert [tuple(r) for r in await postgres.batch(work)] == [(1,)]  # the failed try left nothing
    assert len(tries) == 2

    def always(sql: Sql) -> None:
        sql("DO $$ BEGIN RAISE EXCEPTION 'could not serialize' USING ERRCODE = '40001'; END $$")

    with pytest.raises(StoreBusy, match="40001"):
        await postgres.batch(always)
