"""The placement claim, and group commit for it.

A claim places an instance (node_id and region_id set) with guarded writes, each a re-check of the snapshot
the decision came from: a place in the region (the database caps the counter at serverLimit), the node's
memory, CPU, disk and free allocations (and that it is open to the instance's organization), then the
allocations themselves (assigned only where still free). Any miss raises ClaimLost and the claim's writes roll
back whole.

It is plain SQL, run by ``Store.batch``: on SQLite a whole batch of claims is one thread hop and one
transaction. A durable commit costs an fsync, so claims waiting at the same moment share it: each runs in
its own SAVEPOINT (a claim that loses its race rolls back alone), and every caller hears its outcome only
after the commit made it durable. A lone claim is its own batch and waits for nobody. On PostgreSQL, where
a round trip is what a claim costs, a claim with nothing written beside it is one all-or-nothing statement
(_ONE_CLAIM: no savepoint), a batch's claims go to the server in one round trip, and claims go down several
lanes by region, whose batches commit side by side.

Lock order. Every writer that touches more than one of these takes them in this order, so no two
transactions wait on each other in a circle (PostgreSQL would detect it and abort one): an instance's own
row (a transition's SELECT ... FOR UPDATE; a claim's instance is new and nobody else's), then its region,
then its node, then allocations. Counters (regions.live_count, the nodes' usage and free_allocations) move
by what the transaction itself changes, in the guarded statement that takes the lock; none is recounted
(under read committed a recount races a concurrent claim and drifts).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError

from coordinator.domain.records import Allocation, Instance
from coordinator.store.engine import Sql, Store, Transact, as_busy
from coordinator.store.events import INSERT_PLACED, placed_params
from coordinator.store.instances import INSERT_INSTANCE, INSERT_NUMBER, instance_params
from coordinator.store.tables import instances

#: Claims per transaction at most: bounds how long a caller waits for a commit.
MAX_BATCH = 24
#: How long the claim writer keeps the write lock while claims keep coming.
MAX_HOLD_S = 0.05
#: How long the claim writer waits for the next claim before giving the write lock back.
LINGER_S = 0.002
#: Claim lanes on PostgreSQL (see ClaimQueue). Two, measured against four (bench/placement.py, rounds
#: interleaved in one process): the same rate for one coordinator at less CPU per claim (bigger batches,
#: fewer commits), and 5-15% more for three coordinators sharing the server.
LANES = 2


class ClaimLost(Exception):
    """The candidate was good in the snapshot but not any more (another claim won); try the next one.
    Nothing of the attempt is kept."""


class ClaimRefused(Exception):
    """A row written with the claim was refused by the database (e.g. a server name taken meanwhile). No
    other candidate would do better; nothing of the attempt is kept."""


#: A further statement written in the claim's transaction (SQL with named parameters).
Statement = tuple[str, dict[str, Any]]


_TAKE_REGION_PLACE = """
UPDATE regions SET live_count = live_count + 1
WHERE id = :region AND live_count < server_limit RETURNING id"""

_TAKE_NODE_ROOM = """
UPDATE nodes SET used_memory_mib = used_memory_mib + :memory, used_cpu_percent = used_cpu_percent + :cpu,
    used_disk_mib = used_disk_mib + :disk, free_allocations = free_allocations - :need
WHERE id = :node AND maintenance = :no AND free_allocations >= :need
    AND (organization_id IS NULL OR organization_id = :org)
    AND used_memory_mib + :memory <= memory_mib * (100 + overallocation_pct) / 100.0
    AND used_cpu_percent + :cpu <= cpu_count * 100 * (100 + overallocation_pct) / 100.0
    AND used_disk_mib + :disk <= disk_mib * (100 + overallocation_pct) / 100.0
RETURNING id"""

_ALLOCATION_COLUMNS = (
    "id, node_id, bind_address, port, alias, notes, instance_id, is_primary, created_at, updated_at"
)


def _allocation(row: Sequence[Any]) -> Allocation:
    return Allocation(
        id=row[0],
        node_id=row[1],
        bind_address=row[2],
        port=row[3],
        alias=row[4],
        notes=row[5],
        instance_id=row[6],
        primary=bool(row[7]),
        created_at=row[8],
        updated_at=row[9],
    )


def _in(name: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """An IN list as named parameters (portable: no driver-specific array binding)."""
    params = {f"{name}{i}": v for i, v in enumerate(values)}
    return "(" + ", ".join(f":{p}" for p in params) + ")", params


def claim(
    sql: Sql,
    inst: Instance,
    *,
    ports: Sequence[int],
    port_count: int,
    primary: int | None,
    extra: Sequence[Statement] = (),
) -> list[Allocation]:
    """Claim inside the caller's transaction; on ClaimLost or ClaimRefused the caller rolls back (to its
    savepoint). ``extra`` rows (the instance's identity, its tags) are written with it or not at all."""
    need = len(ports) if ports else port_count
    if inst.region_id is not None and not sql(_TAKE_REGION_PLACE, {"region": inst.region_id}):
        raise ClaimLost("region at its serverLimit")
    room = dict(
        node=inst.node_id,
        memory=inst.memory_mib,
        cpu=inst.cpu_percent,
        disk=inst.disk_mib,
        need=need,
        no=False,
        org=inst.organization_id,
    )
    if not sql(_TAKE_NODE_ROOM, room):
        raise ClaimLost("node resources or allocations taken, or the node is another organization's")
    sql(INSERT_INSTANCE, instance_params(inst))
    sql(INSERT_NUMBER, {"id": inst.id})
    sql(INSERT_PLACED, placed_params(inst))
    pick = "SELECT id FROM allocations WHERE node_id = :node AND instance_id IS NULL"
    params: dict[str, Any] = {"node": inst.node_id, "need": need}
    if ports:
        listed, port_params = _in("port", ports)
        pick += f" AND port IN {listed}"
        params.update(port_params)
    primary_port = primary if primary is not None else (ports[0] if ports else None)
    is_primary = "port = :primary" if primary_port is not None else ":primary"
    # The outer re-check keeps two concurrent claims (PostgreSQL, read committed) from both taking a row the
    # subquery saw free. It is spelled so no index can serve it: SQLite would otherwise drive the UPDATE
    # through the instance_id index and walk every free allocation of the fleet.
    claimed = sql(
        f"UPDATE allocations SET instance_id = :instance, instance_released = :no,"
        f" is_primary = ({is_primary}), updated_at = :now"
        f" WHERE id IN ({pick} ORDER BY port, bind_address LIMIT :need) AND COALESCE(instance_id, '') = ''"
        f" RETURNING {_ALLOCATION_COLUMNS}",
        {
            **params,
            "instance": inst.id,
            "no": False,
            "primary": primary_port if primary_port is not None else need == 1,
            "now": inst.created_at,
        },
    )
    held = sorted((_allocation(r) for r in claimed), key=lambda a: (not a.primary, a.port))
    if len(held) != need or (ports and len({a.port for a in held}) != len(ports)):
        raise ClaimLost("allocations taken")
    if primary_port is None and need > 1:
        # Several free allocations and no primary named: the lowest port is the primary.
        sql("UPDATE allocations SET is_primary = :yes WHERE id = :id", {"yes": True, "id": held[0].id})
        held[0].primary = True
    for statement, values in extra:
        try:
            sql(statement, values)
        except (sqlite3.IntegrityError, IntegrityError) as exc:  # the raw writer's, or SQLAlchemy's
            raise ClaimRefused(str(exc)) from exc
    return held


# ---------------------------------------------------------------- PostgreSQL: one statement a claim


def _typed_instance_insert() -> str:
    """INSERT_INSTANCE as INSERT ... SELECT with every parameter cast to its column's type (a SELECT list
    gives PostgreSQL no column to infer a parameter's type from), for use inside a WITH."""
    head, values = INSERT_INSTANCE.split("VALUES", 1)
    names = [v.strip().lstrip(":") for v in values.strip().strip("()").split(",")]
    pg = postgresql.dialect()  # type: ignore[no-untyped-call]
    # Text cast without its length: an overlong value must be refused by the column, not cut by the cast.
    types = {n: re.sub(r"VARCHAR\(\d+\)", "VARCHAR", instances.c[n].type.compile(dialect=pg)) for n in names}
    casts = ", ".join(f"CAST(:{n} AS {types[n]})" for n in names)
    return f"{head.strip()} SELECT {casts} WHERE (SELECT fine FROM go)"


_INSERT_INSTANCE_IF_FINE = _typed_instance_insert()
#: The placement's event, written by the same statement when it wins.
_INSERT_PLACED_IF_FINE = (
    INSERT_PLACED.split("VALUES", 1)[0]
    + "SELECT CAST(:placed_at AS DOUBLE PRECISION), 'instance.placed', CAST(:placed_org AS INTEGER),"
    " CAST(:placed_node AS VARCHAR), CAST(:placed_id AS VARCHAR), CAST(:placed_data AS JSON)"
    " WHERE (SELECT fine FROM go)"
)


#: The claim as one data-modifying WITH statement, all or nothing: the region's place, the node's room and
#: the free allocations are locked and checked first, and every write is conditioned on all of them, so a
#: claim that loses writes nothing and needs no savepoint. One text for every claim (ports named or any,
#: a primary or none, a region or none: each a parameter), so a batch's claims go to the driver as one
#: pipelined round trip. The guards are claim()'s; the store tests run both engines against the same
#: invariants.
_ONE_CLAIM = f"""WITH picked AS (SELECT id, port, bind_address FROM allocations
    WHERE node_id = :node AND instance_id IS NULL
        AND (cardinality(CAST(:ports AS INTEGER[])) = 0 OR port = ANY(CAST(:ports AS INTEGER[])))
    ORDER BY port, bind_address LIMIT :need FOR NO KEY UPDATE),
reg AS (SELECT id FROM regions WHERE id = CAST(:region AS VARCHAR) AND live_count < server_limit
    FOR NO KEY UPDATE),
nd AS (SELECT id FROM nodes WHERE id = :node AND maintenance = :no AND free_allocations >= :need
    AND (organization_id IS NULL OR organization_id = :org)
    AND used_memory_mib + :memory <= memory_mib * (100 + overallocation_pct) / 100.0
    AND used_cpu_percent + :cpu <= cpu_count * 100 * (100 + overallocation_pct) / 100.0
    AND used_disk_mib + :disk <= disk_mib * (100 + overallocation_pct) / 100.0
    FOR NO KEY UPDATE),
go AS (SELECT (SELECT count(*) FROM picked) = :need AND (SELECT count(*) FROM nd) = 1
    AND (CAST(:region AS VARCHAR) IS NULL OR (SELECT count(*) FROM reg) = 1)
    -- a port named twice can never be had twice
    AND (cardinality(CAST(:ports AS INTEGER[])) = 0
        OR (SELECT count(DISTINCT port) FROM picked) = cardinality(CAST(:ports AS INTEGER[]))) AS fine),
r AS (UPDATE regions SET live_count = live_count + 1
    WHERE id = CAST(:region AS VARCHAR) AND (SELECT fine FROM go)),
n AS (UPDATE nodes SET used_memory_mib = used_memory_mib + :memory,
    used_cpu_percent = used_cpu_percent + :cpu, used_disk_mib = used_disk_mib + :disk,
    free_allocations = free_allocations - :need WHERE id = :node AND (SELECT fine FROM go)),
i AS ({_INSERT_INSTANCE_IF_FINE}),
num AS (INSERT INTO instance_numbers (instance_id) SELECT :id WHERE (SELECT fine FROM go)),
ev AS ({_INSERT_PLACED_IF_FINE})
UPDATE allocations a SET instance_id = :instance, instance_released = :no,
    -- several free allocations and no primary named: the lowest port is the primary
    is_primary = (CASE WHEN CAST(:primary AS INTEGER) IS NULL
        THEN a.id = (SELECT id FROM picked ORDER BY port, bind_address LIMIT 1)
        ELSE a.port = CAST(:primary AS INTEGER) END),
    updated_at = :now
FROM picked WHERE a.id = picked.id AND (SELECT fine FROM go)
RETURNING {", ".join(f"a.{c.strip()}" for c in _ALLOCATION_COLUMNS.split(","))}"""
#: Where the instance's id sits in a returned allocation row.
_HOLDER = [c.strip() for c in _ALLOCATION_COLUMNS.split(",")].index("instance_id")


def _one_claim_params(
    inst: Instance, ports: Sequence[int], port_count: int, primary: int | None
) -> dict[str, Any]:
    return {
        **instance_params(inst),
        "node": inst.node_id,
        "region": inst.region_id,
        "memory": inst.memory_mib,
        "cpu": inst.cpu_percent,
        "disk": inst.disk_mib,
        "need": len(ports) if ports else port_count,
        "ports": list(ports),
        "primary": primary if primary is not None else (ports[0] if ports else None),
        "no": False,
        "org": inst.organization_id,
        "instance": inst.id,
        "now": inst.created_at,
        **placed_params(inst),
    }


def claims_in_one_round_trip(sql: Sql, batch: Sequence[_Claim]) -> list[list[Allocation]]:
    """Every claim of ``batch`` as _ONE_CLAIM, sent together; each claim's allocations (empty: it lost)."""
    rows = sql.many(_ONE_CLAIM, [_one_claim_params(c.inst, c.ports, c.port_count, c.primary) for c in batch])
    held: dict[str, list[Allocation]] = {}
    for row in rows:
        held.setdefault(row[_HOLDER], []).append(_allocation(row))
    return [sorted(held.get(c.inst.id, ()), key=lambda a: (not a.primary, a.port)) for c in batch]


@dataclass(slots=True)
class _Claim:
    inst: Instance
    ports: Sequence[int]
    port_count: int
    primary: int | None
    extra: Sequence[Statement]
    done: asyncio.Future[list[Allocation]]


Outcome = list[Allocation] | ClaimRefused | None


def _lock_places(sql: Sql, batch: Sequence[_Claim]) -> None:
    """Lock every region, then every node, the batch's claims will take, each in id order, before the first
    claim: one claim after another would take region, node, region, node in arrival order, and two batches
    (or a batch and the heartbeat writer, which takes nodes in id order) could wait in a circle. PostgreSQL
    only (SQLite has one writer, and no FOR UPDATE).

    FOR NO KEY UPDATE, the lock an UPDATE of non-key columns takes anyway, not FOR UPDATE: the latter also
    blocks foreign-key checks, and a region updated twice in one transaction has its fallback's row checked
    (KEY SHARE), which another lane's batch may hold; two lanes would then wait on each other."""
    for table, key in (("regions", "region_id"), ("nodes", "node_id")):
        ids = sorted({getattr(item.inst, key) for item in batch} - {None})
        if ids:
            listed, params = _in("id", ids)
            sql(f"SELECT id FROM {table} WHERE id IN {listed} ORDER BY id FOR NO KEY UPDATE", params)


def _claim_each(sql: Sql, batch: Sequence[_Claim], lock_first: bool = False) -> list[Outcome]:
    if lock_first:
        # Even for one claim: the one-statement claim's WITH may lock its allocations before its region
        # and node; held already, they keep the lock order.
        _lock_places(sql, batch)
    outcomes: dict[int, Outcome] = {}
    if lock_first:
        # PostgreSQL: the claims with nothing written beside them, all-or-nothing statements, no savepoint.
        plain = [n for n, item in enumerate(batch) if not item.extra]
        held_each = claims_in_one_round_trip(sql, [batch[n] for n in plain])
        outcomes.update((n, held or None) for n, held in zip(plain, held_each, strict=True))
    for n, item in enumerate(batch):
        if n in outcomes:
            continue
        held: Outcome
        sql("SAVEPOINT claim")
        try:
            held = claim(
                sql,
                item.inst,
                ports=item.ports,
                port_count=item.port_count,
                primary=item.primary,
                extra=item.extra,
            )
        except ClaimLost:
            sql("ROLLBACK TO SAVEPOINT claim")
            held = None
        except ClaimRefused as exc:
            sql("ROLLBACK TO SAVEPOINT claim")
            held = exc
        sql("RELEASE SAVEPOINT claim")
        outcomes[n] = held
    return [outcomes[n] for n in range(len(batch))]


class ClaimQueue:
    """Claims wait here and the writer takes them in batches as they come: while one batch commits, the
    event loop decides the next ones, and the writer picks those up without a round trip through the loop.
    It gives the write lock back when nothing waits, or after MAX_HOLD_S so other writers get their turn."""

    def __init__(self, store: Store, lanes: int | None = None) -> None:
        self.store = store
        # SQLite has one writer. PostgreSQL takes several transactions at once, so claims go down lanes by
        # region (by node without one): two lanes never lock the same region or node (a node is in one
        # region), so their batches commit side by side and never wait on each other.
        self.lanes = lanes or (1 if store.is_sqlite else LANES)
        self._waiting = [collections.deque[_Claim]() for _ in range(self.lanes)]
        self._arrived = [threading.Event() for _ in range(self.lanes)]
        self._drainers: list[asyncio.Task[None] | None] = [None] * self.lanes

    async def claim(
        self,
        inst: Instance,
        *,
        ports: Sequence[int],
        port_count: int,
        primary: int | None,
        extra: Sequence[Statement] = (),
    ) -> list[Allocation]:
        """The allocations held, once durable; ClaimLost when the candidate was taken meanwhile,
        ClaimRefused when the database refused one of the ``extra`` rows."""
        done: asyncio.Future[list[Allocation]] = asyncio.get_running_loop().create_future()
        lane = zlib.crc32((inst.region_id or inst.node_id or "").encode()) % self.lanes
        self._waiting[lane].append(_Claim(inst, ports, port_count, primary, extra, done))
        self._arrived[lane].set()
        # Its own task, not the caller's: a caller that goes away must not strand the others' claims.
        drainer = self._drainers[lane]
        if drainer is None or drainer.done():
            self._drainers[lane] = asyncio.create_task(self._drain(lane), name=f"claim-batches-{lane}")
        return await done

    async def _drain(self, lane: int) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting[lane]:
            await self.store.on_writer(functools.partial(self._write, loop, lane))

    def _write(self, loop: asyncio.AbstractEventLoop, lane: int, transact: Transact) -> None:
        """On the writer: batch after batch while claims keep coming (deque appends and pops are atomic),
        at least one batch per turn with the lock."""
        until = time.monotonic() + MAX_HOLD_S
        waiting, arrived = self._waiting[lane], self._arrived[lane]
        while True:
            if not waiting:
                # The loop is deciding the next claims right now: wait for them a moment rather than hand
                # the lock back and come round again.
                arrived.clear()
                # (Only on a writer thread: elsewhere this job runs on the event loop, which must not wait.)
                linger = LINGER_S if self.store.is_sqlite else 0.0
                if not waiting and not arrived.wait(linger):
                    return
            batch = [waiting.popleft() for _ in range(min(MAX_BATCH, len(waiting)))]
            try:
                outcomes: list[Outcome] | BaseException = transact(
                    functools.partial(_claim_each, batch=batch, lock_first=not self.store.is_sqlite)
                )
            except Exception as exc:  # the commit itself failed: nobody's claim holds
                outcomes = as_busy(exc)
            loop.call_soon_threadsafe(_settle, batch, outcomes)
            if time.monotonic() >= until:
                return


def _settle(batch: Sequence[_Claim], outcomes: Sequence[Outcome] | BaseException) -> None:
    for n, item in enumerate(batch):
        if item.done.done():
            continue
        held = outcomes if isinstance(outcomes, BaseException) else outcomes[n]
        if isinstance(held, BaseException):
            item.done.set_exception(held)
        elif held is None:
            item.done.set_exception(ClaimLost("taken meanwhile"))
        else:
            item.done.set_result(held)


async def claim_now(
    store: Store, inst: Instance, *, ports: Sequence[int], port_count: int, primary: int | None
) -> list[Allocation]:
    """One claim in its own transaction (no queue)."""
    return await store.batch(
        lambda sql: claim(sql, inst, ports=ports, port_count=port_count, primary=primary)
    )
