"""Instances and the allocations they hold."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, bindparam, case, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from common.logging import get
from coordinator.domain import lifecycle
from coordinator.domain.lifecycle import Event
from coordinator.domain.records import LIVE_STATES, WANTED_STATES, Instance, InstanceState, ServerIdentity
from coordinator.store import events as events_store
from coordinator.store.engine import chunks, execute_many
from coordinator.store.nodes import allocation_from_row
from coordinator.store.rows import record_from_row
from coordinator.store.tables import (
    allocations,
    instance_numbers,
    instance_tags,
    instances,
    nodes,
    regions,
    servers,
)

log = get("coordinator.lifecycle")


def instance_from_row(row: Row[Any]) -> Instance:
    return record_from_row(
        Instance,
        row,
        env=dict(row.env or {}),
        state=InstanceState(row.state),
        suspended=bool(row.suspended),
        command=list(row.command or []),
        pending_release=bool(row.pending_release),
        # The column is superseded by the instance_tags table (migration 0009); _attach fills them in.
        tags=[],
    )


INSERT_INSTANCE = """
INSERT INTO instances (id, name, organization_id, owner_id, image, image_ref, command, stop_signal,
    memory_mib, cpu_percent, disk_mib, env, tags, node_id, region_id, state, error, suspended, released,
    created_at, updated_at, state_changed_at, size, bandwidth_mbps, expires_at, redeploy_max_count,
    replaces_id)
VALUES (:id, :name, :organization_id, :owner_id, :image, :image_ref, :command, :stop_signal,
    :memory_mib, :cpu_percent, :disk_mib, :env, :tags, :node_id, :region_id, :state, :error, :suspended,
    :released, :created_at, :updated_at, :state_changed_at, :size, :bandwidth_mbps, :expires_at,
    :redeploy_max_count, :replaces_id)"""

#: Every instance's stable number, handed out with its insert.
INSERT_NUMBER = "INSERT INTO instance_numbers (instance_id) VALUES (:id)"


def instance_params(inst: Instance) -> dict[str, Any]:
    return dict(
        id=inst.id,
        name=inst.name,
        organization_id=inst.organization_id,
        owner_id=inst.owner_id,
        image=inst.image,
        image_ref=inst.image_ref,
        command=json.dumps(inst.command),
        stop_signal=inst.stop_signal,
        memory_mib=inst.memory_mib,
        cpu_percent=inst.cpu_percent,
        disk_mib=inst.disk_mib,
        env=json.dumps(inst.env),
        # Superseded by the instance_tags table (migration 0009): a server's tags live there.
        tags="[]",
        node_id=inst.node_id,
        region_id=inst.region_id,
        state=inst.state.value,
        error=inst.error,
        suspended=inst.suspended,
        released=inst.state is InstanceState.RELEASED,
        created_at=inst.created_at,
        updated_at=inst.updated_at,
        state_changed_at=inst.state_changed_at,
        size=inst.size,
        bandwidth_mbps=inst.bandwidth_mbps,
        expires_at=inst.expires_at,
        redeploy_max_count=inst.redeploy_max_count,
        replaces_id=inst.replaces_id,
    )


async def insert_instance(conn: AsyncConnection, inst: Instance) -> None:
    await conn.execute(text(INSERT_INSTANCE), instance_params(inst))
    await conn.execute(text(INSERT_NUMBER), {"id": inst.id})


async def free_allocations_by_port(
    conn: AsyncConnection, node_id: str, ports: Sequence[int]
) -> tuple[dict[int, str], list[int]]:
    """({port: allocation id} of free allocations, [ports that are not allocations of the node at all])."""
    rows = (
        await conn.execute(
            select(allocations.c.id, allocations.c.port, allocations.c.instance_id)
            .where(allocations.c.node_id == node_id, allocations.c.port.in_(list(ports)))
            .order_by(allocations.c.port, allocations.c.bind_address)
        )
    ).all()
    known = {r.port for r in rows}
    free: dict[int, str] = {}
    for r in rows:
        if r.instance_id is None:
            free.setdefault(r.port, r.id)
    return free, [p for p in ports if p not in known]


async def get_instance(conn: AsyncConnection, instance_id: str) -> Instance | None:
    row = (await conn.execute(select(instances).where(instances.c.id == instance_id))).first()
    if row is None:
        return None
    inst = instance_from_row(row)
    await _attach(conn, [inst])
    return inst


async def list_instances(
    conn: AsyncConnection,
    *,
    organization_id: int | None = None,
    owner_id: str | None = None,
    node_id: str | None = None,
    states: Collection[InstanceState] | None = None,
) -> list[Instance]:
    query = select(instances).order_by(instances.c.created_at, instances.c.id)
    if organization_id is not None:
        query = query.where(instances.c.organization_id == organization_id)
    if owner_id is not None:
        query = query.where(instances.c.owner_id == owner_id)
    if node_id is not None:
        query = query.where(instances.c.node_id == node_id)
    if states is not None:
        query = query.where(instances.c.state.in_([s.value for s in states]))
    found = [instance_from_row(r) for r in await conn.execute(query)]
    await _attach(conn, found)
    return found


async def ids_in_states(
    conn: AsyncConnection, node_id: str, ids: Sequence[str], states: Collection[InstanceState]
) -> list[str]:
    """Which of ``ids`` are instances of the node in one of ``states``."""
    if not ids:
        return []
    rows = await conn.execute(
        select(instances.c.id)
        .where(
            instances.c.id.in_(list(ids)),
            instances.c.node_id == node_id,
            instances.c.state.in_([s.value for s in states]),
        )
        .order_by(instances.c.id)
    )
    return [r.id for r in rows]


async def of_organization(conn: AsyncConnection, ids: Collection[str], organization_id: int) -> set[str]:
    """Which of ``ids`` are instances of the organization."""
    if not ids:
        return set()
    rows = await conn.execute(
        select(instances.c.id).where(
            instances.c.id.in_(list(ids)), instances.c.organization_id == organization_id
        )
    )
    return {r.id for r in rows}


async def desired_for_node(conn: AsyncConnection, node_id: str) -> list[Instance]:
    """What the node should run: every instance placed on it that is neither released nor failed nor
    being removed."""
    return await list_instances(conn, node_id=node_id, states=WANTED_STATES)


async def _attach(conn: AsyncConnection, found: list[Instance]) -> None:
    """What lives in other tables: allocations, the servers dialect's identity, tags."""
    if not found:
        return
    by_id = {i.id: i for i in found}
    ids = list(by_id)
    rows = await conn.execute(
        select(allocations)
        .where(allocations.c.instance_id.in_(ids))
        .order_by(allocations.c.is_primary.desc(), allocations.c.port)
    )
    for r in rows:
        by_id[r.instance_id].allocations.append(allocation_from_row(r))
    numbered = select(instance_numbers.c.instance_id, instance_numbers.c.number)
    for r in await conn.execute(numbered.where(instance_numbers.c.instance_id.in_(ids))):
        by_id[r.instance_id].number = r.number
    for r in await conn.execute(select(servers).where(servers.c.instance_id.in_(ids))):
        by_id[r.instance_id].server = ServerIdentity(
            r.name, r.secret, r.ca_key, r.ca_cert, r.tls_key, r.tls_cert
        )
    tagged = await conn.execute(
        select(instance_tags.c.instance_id, instance_tags.c.tag)
        .where(instance_tags.c.instance_id.in_(ids))
        .order_by(instance_tags.c.tag)
    )
    for r in tagged:
        by_id[r.instance_id].tags.append(r.tag)


@dataclass(frozen=True, slots=True)
class Moved:
    """A transition that happened: the state before and after (equal for one that only updates, e.g. the
    reason of an unhealthy instance)."""

    old: InstanceState
    new: InstanceState


async def transition(
    conn: AsyncConnection, instance_id: str, event: Event, *, now: float, **values: Any
) -> Moved | None:
    """Apply ``event`` as the lifecycle table says, under the row's lock (FOR UPDATE where the database has
    it; SQLite has one writer), or refuse it (None, logged): a stale report never undoes a newer state.
    Extra column values ride along.

    What the new state implies is written in the same transaction: leaving the live states gives the
    instance's place in its region and its share of the node back (the counters the placement claim
    raises), and a state that holds no allocations frees them (first: the database refuses a released
    instance that still holds one)."""
    row = (
        await conn.execute(
            select(
                instances.c.state,
                instances.c.organization_id,
                instances.c.region_id,
                instances.c.node_id,
                instances.c.memory_mib,
                instances.c.cpu_percent,
                instances.c.disk_mib,
            )
            .where(instances.c.id == instance_id)
            .with_for_update()
        )
    ).first()
    if row is None:
        return None
    old = InstanceState(row.state)
    new = lifecycle.next_state(old, event)
    if new is None:
        quiet = (old, event) in lifecycle.EXPECTED_REFUSALS
        (log.debug if quiet else log.info)(
            "transition refused", instance_id=instance_id, state=old.value, transition_event=event.value
        )
        return None
    # The one lock order every writer keeps (a claim takes its region, then its node, then allocations):
    # this instance's row (locked above), its region, its node, its allocations. Counters move by what this
    # transaction changes, never by a recount (under read committed a recount races concurrent claims).
    leaving = old in LIVE_STATES and new not in LIVE_STATES
    freeing = not lifecycle.holds_allocations(new)
    if leaving and row.region_id is not None:
        await conn.execute(
            update(regions).where(regions.c.id == row.region_id).values(live_count=regions.c.live_count - 1)
        )
    held = await allocations_held(conn, instance_id) if freeing else {}
    for node_id in sorted({row.node_id, *held} - {None}):
        changes: dict[str, Any] = {}
        if leaving and node_id == row.node_id:
            changes.update(
                used_memory_mib=nodes.c.used_memory_mib - row.memory_mib,
                used_cpu_percent=nodes.c.used_cpu_percent - row.cpu_percent,
                used_disk_mib=nodes.c.used_disk_mib - row.disk_mib,
            )
        if held.get(node_id):
            changes["free_allocations"] = nodes.c.free_allocations + held[node_id]
        if changes:
            await conn.execute(update(nodes).where(nodes.c.id == node_id).values(**changes))
    if held:
        await free_instance_allocations(conn, instance_id)
    if new is InstanceState.RELEASED:
        values = {"released": True, "released_at": now, **values}
    if new is not old:
        values["state_changed_at"] = now
    await conn.execute(
        update(instances)
        .where(instances.c.id == instance_id, instances.c.state == old.value)
        .values(state=new.value, updated_at=now, **values)
    )
    if new is not old:
        # Told in the same transaction: the event exists exactly when the change does.
        await events_store.record(
            conn,
            "instance.state",
            at=now,
            data={"old": old.value, "new": new.value, "event": event.value, "error": values.get("error")},
            organization_id=row.organization_id,
            node_id=row.node_id,
            instance_id=instance_id,
        )
    return Moved(old, new)


async def update_instance(conn: AsyncConnection, instance_id: str, now: float, **values: Any) -> None:
    await conn.execute(
        update(instances).where(instances.c.id == instance_id).values(updated_at=now, **values)
    )


async def allocations_held(conn: AsyncConnection, instance_id: str) -> dict[str, int]:
    """How many allocations the instance holds, per node (stable: only its own transitions free them, and
    they hold its row's lock)."""
    found = await conn.execute(
        select(allocations.c.node_id, func.count())
        .where(allocations.c.instance_id == instance_id)
        .group_by(allocations.c.node_id)
    )
    return {node_id: count for node_id, count in found}


async def free_instance_allocations(conn: AsyncConnection, instance_id: str) -> int:
    """Free the instance's allocations; the caller has moved the nodes' free counters already (lock
    order: nodes before allocations)."""
    result = await conn.execute(
        update(allocations)
        .where(allocations.c.instance_id == instance_id)
        .values(instance_id=None, instance_released=None, is_primary=False)
    )
    return result.rowcount or 0


async def write_bandwidth(conn: AsyncConnection, batch: dict[str, dict[str, Any]]) -> None:
    """The batch writer's bandwidth totals: one executemany for every instance that moved bytes."""
    if not batch:
        return
    values: dict[str, Any] = {name: bindparam(name) for name in next(iter(batch.values()))}
    for total in ("rx_bytes", "tx_bytes"):
        # Totals never go back: another coordinator that held the node before may have written a later one
        # than this one's meter started from (coordinator/fleet/bandwidth.py).
        column = instances.c[total]
        new: Any = bindparam(total, type_=column.type)
        values[total] = case((column > new, column), else_=new)
    statement = update(instances).where(instances.c.id == bindparam("b_id")).values(values)
    for chunk in chunks(sorted(batch.items())):
        await execute_many(
            conn, statement, [{"b_id": instance_id, **values} for instance_id, values in chunk]
        )


async def bandwidth_meters(
    conn: AsyncConnection, node_id: str | None = None
) -> list[tuple[str, int, int, str | None, int, int]]:
    """What the bandwidth meters of the live instances (of one node) start from after a restart, or when
    the node's session comes here from another coordinator."""
    query = select(
        instances.c.id,
        instances.c.rx_bytes,
        instances.c.tx_bytes,
        instances.c.net_epoch,
        instances.c.net_rx_seen,
        instances.c.net_tx_seen,
    ).where(instances.c.state.in_([s.value for s in LIVE_STATES]))
    if node_id is not None:
        query = query.where(instances.c.node_id == node_id)
    rows = await conn.execute(query)
    return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]


async def instances_by_ids(conn: AsyncConnection, ids: Sequence[str]) -> list[Instance]:
    """The instances in the order asked (a page of ids a query chose)."""
    if not ids:
        return []
    found = {
        i.id: i
        for i in map(
            instance_from_row, await conn.execute(select(instances).where(instances.c.id.in_(list(ids))))
        )
    }
    ordered = [found[i] for i in ids if i in found]
    await _attach(conn, ordered)
    return ordered
