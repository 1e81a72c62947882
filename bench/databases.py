"""Databases for benchmarks and tests: the throw-away PostgreSQL cluster `make test-env` starts
(tests/env/ensure-postgres.sh writes its URL), and fresh databases in it."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg

URL_FILE = Path(__file__).resolve().parents[1] / "tests" / "env" / ".cache" / "postgres.url"


def postgres_url() -> str | None:
    """The maintenance URL of the test cluster (MOORAGE_TEST_POSTGRES_URL wins over the file)."""
    if os.environ.get("MOORAGE_TEST_POSTGRES_URL"):
        return os.environ["MOORAGE_TEST_POSTGRES_URL"]
    return URL_FILE.read_text().strip() if URL_FILE.exists() else None


async def fresh_database(base: str) -> str:
    """A new, empty database in the cluster ``base`` names; its URL."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{base.rsplit('/', 1)[0]}/{name}"


async def drop_database(base: str, url: str) -> None:
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


def server_cpu_s() -> float | None:
    """CPU seconds the PostgreSQL server processes on this machine have used, those that ended included
    (the postmaster's reaped children); None when none runs here (a remote database)."""
    total, found = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, _, rest = text.partition("(")[2].partition(")")
        if name != "postgres":
            continue
        fields = rest.split()
        # utime, stime, cutime, cstime (fields 14-17 of proc(5)), in clock ticks
        total += sum(int(f) for f in fields[11:15])
        found = True
    return total / os.sysconf("SC_CLK_TCK") if found else None


def on_postgres(run: Callable[[str], None], database: str | None, what: str) -> None:
    """``run`` on ``database``, or on a fresh database of the test cluster dropped after; says so and
    returns when there is neither."""
    if database:
        run(database)
        return
    base = postgres_url()
    if base is None:
        print(f"{what}: no PostgreSQL to run on (make test-env starts one, or give --database)")
        return
    url = asyncio.run(fresh_database(base))
    try:
        run(url)
    finally:
        asyncio.run(drop_database(base, url))
