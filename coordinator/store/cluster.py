"""Several coordinators on one database: the shared secrets (sealed rows), the coordinators, and who holds
each node's session."""

from __future__ import annotations

from sqlalchemy import delete, insert, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.domain.agents import ClusterView
from coordinator.store.engine import Store
from coordinator.store.tables import cluster_secrets, coordinators, node_sessions, nodes


async def read_sealed(conn: AsyncConnection) -> dict[str, str]:
    rows = await conn.execute(select(cluster_secrets.c.name, cluster_secrets.c.value))
    return {r.name: r.value for r in rows}


async def insert_sealed(conn: AsyncConnection, sealed: dict[str, str], now: float) -> None:
    await conn.execute(
        insert(cluster_secrets), [{"name": n, "value": v, "created_at": now} for n, v in sealed.items()]
    )


class ClusterRows:
    """The coordinators' rows and the session holders', for fleet/cluster.py (its Membership port)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def join(self, me: str, name: str, address: str, now: float) -> None:
        async with self.store.write() as conn:
            await conn.execute(
                insert(coordinators).values(id=me, name=name, address=address, started_at=now, last_seen=now)
            )

    async def touch(self, me: str, now: float) -> None:
        async with self.store.write() as conn:
            await conn.execute(update(coordinators).where(coordinators.c.id == me).values(last_seen=now))

    async def leave(self, me: str) -> None:
        """A clean stop: the others see at once that what it held is nobody's."""
        async with self.store.write() as conn:
            await conn.execute(delete(coordinators).where(coordinators.c.id == me))

    async def hold(self, node_id: str, me: str, now: float) -> None:
        async with self.store.write() as conn:
            await conn.execute(
                text(
                    "INSERT INTO node_sessions (node_id, coordinator_id, since) VALUES (:node, :me, :now)"
                    " ON CONFLICT (node_id) DO UPDATE SET coordinator_id = :me, since = :now"
                ),
                {"node": node_id, "me": me, "now": now},
            )

    async def view(self, me: str, alive_since: float) -> ClusterView:
        async with self.store.read() as conn:
            found = await conn.execute(
                select(coordinators.c.id, coordinators.c.address)
                .where(coordinators.c.last_seen >= alive_since)
                .order_by(coordinators.c.started_at, coordinators.c.id)
            )
            addresses = {r.id: r.address for r in found}
            alive = set(addresses)
            rows = await conn.execute(
                select(nodes.c.id, nodes.c.last_checked, node_sessions.c.coordinator_id)
                .select_from(nodes.outerjoin(node_sessions, node_sessions.c.node_id == nodes.c.id))
                .where(nodes.c.enrolled == true())
            )
            owners: dict[str, str] = {}
            last_checked: dict[str, float | None] = {}
            orphans: set[str] = set()
            for r in rows:
                if r.coordinator_id == me:
                    continue
                if r.coordinator_id in alive:
                    owners[r.id] = r.coordinator_id
                else:
                    orphans.add(r.id)
                last_checked[r.id] = r.last_checked
        return ClusterView(owners, last_checked, frozenset(orphans), tuple(addresses.values()))
