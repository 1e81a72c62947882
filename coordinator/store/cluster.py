"""Several coordinators on one database: the shared secrets (sealed rows), the coordinators, and who holds
each node's session."""

from __future__ import annotations

from sqlalchemy import delete, insert, select, text, true
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.domain.agents import ClusterView
from coordinator.store.engine import Store
from coordinator.store.tables import cluster_secrets, coordinators, node_sessions, nodes


async def read_sealed(conn: AsyncConnection) -> dict[str, str]:
    rows = await conn.execute(select(cluster_secrets.c.name, cluster_secrets.c.value))
    return {r.name: r.value for r in rows}


def sealed_rows(sealed: dict[str, str], now: float) -> list[dict[str, object]]:
    return [{"name": n, "value": v, "created_at": now} for n, v in sealed.items()]


async def insert_sealed(conn: AsyncConnection, sealed: dict[str, str], now: float) -> None:
    await conn.execute(insert(cluster_secrets), sealed_rows(sealed, now))


#: The database's clock, in the unix seconds the rows keep: every coordinator's liveness and every session's
#: age are measured by one clock, whatever the coordinators' hosts' clocks say.
DB_NOW = "EXTRACT(EPOCH FROM clock_timestamp())"


class ClusterRows:
    """The coordinators' rows and the session holders', for fleet/cluster.py (its Membership port).
    PostgreSQL only (several coordinators need it)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def join(self, me: str, name: str, address: str) -> None:
        async with self.store.write() as conn:
            await conn.execute(
                text(
                    "INSERT INTO coordinators (id, name, address, started_at, last_seen)"
                    f" VALUES (:me, :name, :address, {DB_NOW}, {DB_NOW})"
                ),
                {"me": me, "name": name, "address": address},
            )

    async def touch(self, me: str) -> None:
        async with self.store.write() as conn:
            await conn.execute(
                text(f"UPDATE coordinators SET last_seen = {DB_NOW} WHERE id = :me"), {"me": me}
            )

    async def leave(self, me: str) -> None:
        """A clean stop: the others see at once that what it held is nobody's."""
        async with self.store.write() as conn:
            await conn.execute(delete(coordinators).where(coordinators.c.id == me))

    async def hold(self, node_id: str, me: str) -> float | None:
        """Record that the node's session is here, since now; None when a newer session of it is recorded
        elsewhere already (this one is the stale one)."""
        async with self.store.write() as conn:
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO node_sessions (node_id, coordinator_id, since)"
                        f" VALUES (:node, :me, {DB_NOW}) ON CONFLICT (node_id) DO UPDATE"
                        " SET coordinator_id = EXCLUDED.coordinator_id, since = EXCLUDED.since"
                        " WHERE node_sessions.since <= EXCLUDED.since RETURNING since"
                    ),
                    {"node": node_id, "me": me},
                )
            ).first()
        return float(row.since) if row is not None else None

    async def view(self, me: str, alive_s: float) -> ClusterView:
        async with self.store.read() as conn:
            found = await conn.execute(
                text(
                    "SELECT id, address FROM coordinators WHERE last_seen >= "
                    f"{DB_NOW} - :alive ORDER BY started_at, id"
                ),
                {"alive": alive_s},
            )
            addresses = {r.id: r.address for r in found}
            rows = await conn.execute(
                select(
                    nodes.c.id,
                    nodes.c.last_checked,
                    nodes.c.engine_error,
                    node_sessions.c.coordinator_id,
                    node_sessions.c.since,
                )
                .select_from(nodes.outerjoin(node_sessions, node_sessions.c.node_id == nodes.c.id))
                .where(nodes.c.enrolled == true())
            )
            owners: dict[str, str] = {}
            since: dict[str, float] = {}
            last_checked: dict[str, float | None] = {}
            orphans: set[str] = set()
            errors: dict[str, str] = {}
            for r in rows:
                if r.coordinator_id == me:
                    continue
                if r.coordinator_id in addresses:
                    owners[r.id], since[r.id] = r.coordinator_id, float(r.since)
                else:
                    orphans.add(r.id)
                last_checked[r.id] = r.last_checked
                if r.engine_error:
                    errors[r.id] = r.engine_error
        return ClusterView(owners, last_checked, frozenset(orphans), tuple(addresses.values()), since, errors)
