"""The lifecycle table: properties of the pure table (hypothesis), and the same event sequences applied by
the store to a real SQLite file, where the allocations, the region's count and the node's share must
follow the state."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from coordinator.domain import lifecycle
from coordinator.domain.lifecycle import TABLE, Event, next_state
from coordinator.domain.records import InstanceState
from coordinator.store import instances as instances_store
from coordinator.store import regions as regions_store
from coordinator.store.claims import claim_now
from coordinator.store.engine import Store
from coordinator.store.tables import allocations, nodes, regions
from tests.unit.factories import make_instance, seeded_store

S = InstanceState
events = st.lists(st.sampled_from(list(Event)), max_size=12)


def run(state: InstanceState, sequence: list[Event]) -> InstanceState:
    """Apply each event the table allows; refused ones change nothing (as in the store)."""
    for event in sequence:
        state = next_state(state, event) or state
    return state


def reachable() -> set[InstanceState]:
    seen, frontier = {S.PENDING}, [S.PENDING]
    while frontier:
        state = frontier.pop()
        for event in Event:
            to = next_state(state, event)
            if to is not None and to not in seen:
                seen.add(to)
                frontier.append(to)
    return seen


def test_every_state_is_reachable_from_pending_and_nothing_enters_pending() -> None:
    assert reachable() == set(InstanceState)
    assert S.PENDING not in TABLE.values()


def test_nothing_leaves_released() -> None:
    assert all(next_state(S.RELEASED, e) is None for e in Event)


@given(before=events, after=events)
def test_from_any_reachable_state_a_release_ends_released(before: list[Event], after: list[Event]) -> None:
    """Whatever happened before, once released was asked for, anything that follows (late reports, power
    actions, repeated deletes) keeps it releasing until the agent's removal or the node's deletion, and
    then it is released for good."""
    asked = run(run(S.PENDING, before), [Event.RELEASE])
    assert asked in (S.RELEASING, S.RELEASED)
    waiting = run(asked, after)
    assert waiting in (S.RELEASING, S.RELEASED)
    for end in (Event.REMOVED, Event.ABANDONED):
        assert run(waiting, [end, *after]) is S.RELEASED


@given(sequence=events)
def test_allocations_once_given_up_are_never_held_again(sequence: list[Event]) -> None:
    """No path returns to a state that holds allocations once they were given up."""
    state = S.PENDING
    for event in sequence:
        to = next_state(state, event)
        if to is not None and not lifecycle.holds_allocations(state):
            assert not lifecycle.holds_allocations(to), (state, event, to)
        state = to or state


def test_power_actions_never_touch_instances_not_yet_created_or_ended() -> None:
    owner = (Event.START, Event.STOP, Event.RESTART, Event.KILL, Event.SUSPEND, Event.UNSUSPEND)
    for state, event in itertools.product((S.PENDING, S.PROVISIONING, S.RELEASING, S.ERROR), owner):
        assert next_state(state, event) is None, (state, event)


# ---------------------------------------------------------------- the store applies the table


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """On SQLite and on PostgreSQL (tests/databases.py)."""
    store = await seeded_store(store_url, range(30000, 30002))
    async with store.write() as conn:
        region = {"id": "r1", "name": "r", "identifier": "r", "server_limit": 5}
        await regions_store.insert_region(conn, {**region, "created_at": 0.0, "updated_at": 0.0})
        await conn.execute(nodes.update().where(nodes.c.id == "n1").values(region_id="r1"))
    try:
        yield store
    finally:
        await store.close()


async def counters(store: Store) -> tuple[int, int, int, int, int]:
    async with store.read() as conn:
        node = (await conn.execute(select(nodes).where(nodes.c.id == "n1"))).one()
        live = (await conn.execute(select(regions.c.live_count).where(regions.c.id == "r1"))).scalar_one()
        held = len(
            (await conn.execute(select(allocations).where(allocations.c.instance_id.isnot(None)))).all()
        )
    return live, held, node.used_memory_mib, node.used_cpu_percent, node.free_allocations


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=events, after=events)
async def test_the_store_frees_everything_a_release_gives_back(
    store: Store, before: list[Event], after: list[Event]
) -> None:
    baseline = await counters(store)
    iid = str(uuid.uuid4())
    inst = make_instance(iid, node_id="n1", region_id="r1", memory_mib=64, cpu_percent=50)
    assert await claim_now(store, inst, ports=(30000, 30001), port_count=2, primary=30000)
    expected = S.PENDING
    for event in [*before, Event.RELEASE, *after, Event.REMOVED]:
        async with store.write() as conn:
            moved = await instances_store.transition(conn, iid, event, now=1.0)
        to = next_state(expected, event)
        assert (moved.new if moved else None) == to, (expected, event)
        expected = to or expected
        live, held, memory, cpu, _ = await counters(store)
        holds = lifecycle.holds_allocations(expected)
        assert (live, held, memory, cpu) == (
            (baseline[0] + 1, 2, 64, 50) if holds else (baseline[0], 0, 0, 0)
        ), (expected, event)
    assert expected is S.RELEASED
    assert await counters(store) == baseline
    async with store.read() as conn:
        found = await instances_store.get_instance(conn, iid)
    assert found is not None and found.state is S.RELEASED and found.released_at == 1.0
    assert not found.allocations
