"""Generated and derived artefacts stay in step with their sources."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from coordinator.store.engine import Store
from coordinator.store.tables import metadata
from protos.generate import HERE, OUTPUTS, generate


def test_committed_protobuf_code_matches_the_proto(tmp_path: Path) -> None:
    generate(tmp_path)
    stale = [name for name in OUTPUTS if (tmp_path / name).read_bytes() != (HERE / name).read_bytes()]
    assert stale == [], f"run `make protos`: {stale} differ from what protos/moorage.proto gives"


async def test_migrations_build_exactly_the_declared_tables(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'schema.db'}")
    try:
        await store.migrate()

        def diff(conn: Connection) -> list[object]:
            return list(compare_metadata(MigrationContext.configure(conn), metadata))

        async with store.read() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await store.close()
