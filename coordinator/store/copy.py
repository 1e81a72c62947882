"""Copy an embedded store (SQLite) into an empty PostgreSQL database: every table, in an order the foreign
keys accept, and the sequences behind integer keys set past what was copied. One transaction on the target:
a copy that fails leaves it as empty as it was."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Integer, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.engine import Store
from coordinator.store.tables import metadata

BATCH = 1_000


class CopyRefused(ValueError):
    """The target is not an empty PostgreSQL database (or the source is not a store)."""


@dataclass(frozen=True)
class Copied:
    rows: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.rows.values())


async def _holds_rows(conn: AsyncConnection) -> list[str]:
    return [
        table.name
        for table in metadata.sorted_tables
        if (await conn.execute(select(func.count()).select_from(table))).scalar_one()
    ]


async def copy_database(source: Store, target: Store, extra: dict[str, list[dict[str, object]]]) -> Copied:
    """``extra``: rows to add to tables of the target in the same transaction (the cluster's secrets)."""
    if target.engine.dialect.name != "postgresql":
        raise CopyRefused("the target must be a PostgreSQL database (postgresql://...)")
    await source.migrate()  # an older store is brought to this version's schema first, as a start would
    await target.migrate()
    async with target.read() as conn:
        full = await _holds_rows(conn)
    if full:
        raise CopyRefused(f"the target database is not empty (rows in {', '.join(full)}); give an empty one")
    rows: dict[str, int] = {}
    async with source.read() as src, target.write() as dst:
        for table in metadata.sorted_tables:
            count = 0
            # A column naming a row of its own table (a region's fallback) may point at a later row:
            # copied empty, then set once every row is in.
            own = [c.name for c in table.columns if any(f.column.table is table for f in c.foreign_keys)]
            later: list[dict[str, object]] = []
            result = await src.stream(select(table))
            async for chunk in result.partitions(BATCH):
                batch = [dict(r._mapping) for r in chunk]
                for row in batch if own else ():
                    later.append({"k": row["id"], **{c: row[c] for c in own}})
                    row.update(dict.fromkeys(own, None))
                await dst.execute(insert(table), batch)
                count += len(chunk)
            for pointer in later:
                await dst.execute(
                    table.update().where(table.c.id == pointer["k"]).values({c: pointer[c] for c in own})
                )
            for name, values in extra.items():
                if name == table.name and values:
                    await dst.execute(insert(table), values)
                    count += len(values)
            rows[table.name] = count
            keys = list(table.primary_key.columns)
            for column in keys if len(keys) == 1 else ():
                if isinstance(column.type, Integer) and column.autoincrement is not False:
                    # The next insert must not collide with a copied key.
                    await dst.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'),"
                            f" COALESCE((SELECT MAX({column.name}) FROM {table.name}), 0) + 1, false)"
                        )
                    )
    return Copied(rows)
