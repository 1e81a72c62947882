"""Fleet events on SQLite and PostgreSQL: written in the transaction of the change they tell, read in id
order with each caller's visibility, pruned past the retention."""

from __future__ import annotations

import uuid

import pytest

from coordinator.domain.lifecycle import Event
from coordinator.store import events as events_store
from coordinator.store import instances as instances_store
from coordinator.store import nodes as nodes_store
from coordinator.store.engine import Store
from tests.unit.factories import make_instance, make_node

DEDICATED = "dedicated"


async def test_a_state_change_is_an_event_written_with_it_and_a_refused_one_is_none(store: Store) -> None:
    inst = make_instance(str(uuid.uuid4()), node_id="n1", organization_id=1)
    async with store.write() as conn:
        await instances_store.insert_instance(conn, inst)
        first = await events_store.newest_id(conn)
        moved = await instances_store.transition(conn, inst.id, Event.ACCEPTED, now=10.0)
        assert moved is not None and moved.old is not moved.new
        assert await instances_store.transition(conn, inst.id, Event.UNSUSPEND, now=11.0) is None  # refused
    async with store.read() as conn:
        found = await events_store.after(conn, first, organization_id=None, admin=True)
    assert [(e.kind, e.instance_id, e.node_id, e.organization_id, e.at) for e in found] == [
        ("instance.state", inst.id, "n1", 1, 10.0)
    ]
    assert found[0].data == {
        "old": moved.old.value,
        "new": moved.new.value,
        "event": "accepted",
        "error": None,
    }
    # A change rolled back takes its event with it.
    with pytest.raises(RuntimeError):
        async with store.write() as conn:
            await instances_store.transition(conn, inst.id, Event.CREATED, now=12.0)
            raise RuntimeError("the rest of the transaction failed")
    async with store.read() as conn:
        assert len(await events_store.after(conn, first, organization_id=None, admin=True)) == 1


async def test_each_caller_sees_its_organizations_events_and_the_shared_fleets(store: Store) -> None:
    async with store.write() as conn:
        await nodes_store.insert_node(conn, make_node(DEDICATED, organization_id=None))
        start = await events_store.newest_id(conn)
        for org, iid in ((1, "mine"), (2, "theirs")):
            await events_store.record(
                conn, "instance.state", at=1.0, data={}, organization_id=org, node_id="n1", instance_id=iid
            )
        await events_store.record_node_status(conn, "n1", "awaiting_heartbeat", "ready", 2.0)  # shared
        await events_store.record(
            conn, "node.status", at=3.0, data={}, organization_id=2, node_id="dedicated"
        )
    async with store.read() as conn:
        everything = await events_store.after(conn, start, organization_id=None, admin=True)
        mine = await events_store.after(conn, start, organization_id=1, admin=False)
        theirs = await events_store.after(conn, start, organization_id=2, admin=False)
    assert [e.id for e in everything] == sorted(e.id for e in everything) and len(everything) == 4
    assert [(e.kind, e.instance_id or e.node_id) for e in mine] == [
        ("instance.state", "mine"),
        ("node.status", "n1"),
    ]
    assert [(e.kind, e.instance_id or e.node_id) for e in theirs] == [
        ("instance.state", "theirs"),
        ("node.status", "n1"),
        ("node.status", DEDICATED),
    ]
    assert everything[2].data == {"old": "awaiting_heartbeat", "new": "ready"}


async def test_events_past_the_retention_are_pruned(store: Store) -> None:
    async with store.write() as conn:
        start = await events_store.newest_id(conn)
        for at in (100.0, 200.0, 300.0):
            await events_store.record(conn, "node.status", at=at, data={}, node_id="n1")
        assert await events_store.prune(conn, 250.0) == 2
    async with store.read() as conn:
        assert [e.at for e in await events_store.after(conn, start, organization_id=None, admin=True)] == [
            300.0
        ]
