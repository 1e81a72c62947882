"""Partial heartbeats (agent/heartbeat.py): between the full ones a heartbeat carries only the containers
whose status changed, so a coordinator that applies each to what it knew knows what a full one would have
said, after any sequence of changes, engine failures and requests for the full truth. The coordinator's
queue merges heartbeats it has not handled yet (Heartbeat.then); the merge must keep every change too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.heartbeat import HeartbeatDiff, Key, key
from coordinator.domain.agents import Heartbeat
from coordinator.gateway import translate
from protos import moorage_pb2 as pb

ABSENT = pb.CONTAINER_STATE_ABSENT
State: TypeAlias = pb.ContainerState.ValueType


def status(
    iid: str, state: State = pb.CONTAINER_STATE_RUNNING, rx: int = 0, restarts: int = 0
) -> pb.InstanceStatus:
    return pb.InstanceStatus(
        instance_id=iid, container_id=f"c-{iid}", state=state, rx_bytes=rx, tx_bytes=2 * rx, restarts=restarts
    )


def beat(seq: int, *statuses: pb.InstanceStatus, engine_error: str = "") -> pb.Heartbeat:
    host = pb.HostMetrics(cpu_percent=1.5)
    return pb.Heartbeat(seq=seq, sent_at_ms=seq, host=host, instances=statuses, engine_error=engine_error)


def shaper(full_every: int, *hello: pb.InstanceStatus) -> HeartbeatDiff:
    """A session past its first heartbeat (which is full: the Hello has no counters or host metrics)."""
    diff = HeartbeatDiff(full_every, hello)
    assert not diff.shape(beat(0, *hello)).partial
    return diff


def test_nothing_changed_says_only_alive_and_every_nth_is_full() -> None:
    diff = shaper(3, status("a"), status("b"))
    shaped = [diff.shape(beat(n, status("a"), status("b"))) for n in range(1, 7)]
    assert [b.partial for b in shaped] == [True, True, False, True, True, False]
    for b in shaped:
        if b.partial:  # no statuses, no counters, no host metrics: a few bytes
            assert not b.instances and not b.counters and not b.HasField("host") and b.ByteSize() < 20
        else:
            assert [s.instance_id for s in b.instances] == ["a", "b"] and b.HasField("host")


def test_counters_that_moved_go_alone_and_a_change_goes_in_full() -> None:
    diff = shaper(100, status("a"), status("b"), status("c"))
    moved = diff.shape(beat(1, status("a", rx=7), status("b"), status("c", pb.CONTAINER_STATE_EXITED, rx=9)))
    assert moved.partial
    assert [(c.instance_id, c.rx_bytes, c.tx_bytes) for c in moved.counters] == [("a", 7, 14)]
    assert [(s.instance_id, s.state, s.rx_bytes) for s in moved.instances] == [
        ("c", pb.CONTAINER_STATE_EXITED, 9)
    ]
    again = diff.shape(beat(2, status("a", rx=7), status("c", pb.CONTAINER_STATE_EXITED, rx=9), status("d")))
    assert not again.counters  # a's counters stood still
    assert [(s.instance_id, s.state) for s in again.instances] == [
        ("d", pb.CONTAINER_STATE_RUNNING),
        ("b", ABSENT),
    ]
    assert (
        not diff.shape(
            beat(3, status("a", rx=7), status("c", pb.CONTAINER_STATE_EXITED, rx=9), status("d"))
        ).ByteSize()
        > 20
    )


def test_an_engine_failure_is_full_and_so_is_the_beat_after_it_and_one_asked_for() -> None:
    diff = shaper(100, status("a"))
    failed = diff.shape(beat(1, engine_error="the container engine does not answer"))
    assert not failed.partial and failed.engine_error
    assert not diff.shape(beat(2, status("a"))).partial  # what runs is unknown there until a full one
    assert diff.shape(beat(3, status("a"))).partial
    diff.ask_full()
    assert not diff.shape(beat(4, status("a"))).partial
    assert diff.shape(beat(5, status("a"))).partial


def test_agents_that_connected_at_once_send_their_full_heartbeats_in_different_intervals() -> None:
    fulls = []
    for phase in range(3):
        diff = HeartbeatDiff(3, [status("a")], phase)
        fulls.append([n for n in range(7) if not diff.shape(beat(n, status("a"))).partial])
    assert fulls == [[0, 3, 6], [0, 2, 5], [0, 1, 4]]


def test_an_old_coordinator_gets_every_heartbeat_in_full() -> None:
    diff = HeartbeatDiff(0, [status("a")])  # its Welcome has no full_report_every
    assert not any(diff.shape(beat(n, status("a"))).partial for n in range(1, 5))


# ------------------------------------------------------------------ any sequence


@dataclass
class Reading:
    """One heartbeat as the agent builds it: the engine's containers, or its failure."""

    containers: dict[str, tuple[State, int]]  # instance id -> (state, restarts)
    engine_down: bool
    full_asked: bool


ids = st.sampled_from("abcde")
states = st.sampled_from([pb.CONTAINER_STATE_RUNNING, pb.CONTAINER_STATE_EXITED, pb.CONTAINER_STATE_CREATED])
containers = st.dictionaries(ids, st.tuples(states, st.integers(0, 2)), max_size=5)
#: The engine fails now and then; the coordinator asks for the full truth now and then. Counters move on
#: some beats and not on others.
readings = st.builds(
    Reading, containers, st.sampled_from([False] * 5 + [True]), st.sampled_from([False] * 3 + [True])
)


def statuses_of(reading: Reading, tick: int) -> list[pb.InstanceStatus]:
    return [
        status(iid, state, rx=tick // 2 * 1000, restarts=r)
        for iid, (state, r) in sorted(reading.containers.items())
    ]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 5), st.integers(0, 5), containers, st.lists(readings, max_size=30))
def test_partial_heartbeats_applied_in_order_or_merged_tell_what_full_ones_would(
    full_every: int, phase: int, hello: dict[str, tuple[State, int]], sequence: list[Reading]
) -> None:
    first = Reading(hello, False, False)
    diff = HeartbeatDiff(full_every, statuses_of(first, 0), phase)
    first_round = phase % max(full_every, 1)  # beats the round after the first full one starts with
    # What the coordinator knows of each container: its status key and its counters (rx).
    known: dict[str, tuple[Key, int]] | None = {s.instance_id: (key(s), 0) for s in statuses_of(first, 0)}
    since_full, full_due = 0, True  # the first heartbeat after the Hello is full
    merged: Heartbeat | None = None
    for tick, reading in enumerate(sequence, start=1):
        if reading.full_asked:
            diff.ask_full()
        built = (
            beat(tick, engine_error="down")
            if reading.engine_down
            else beat(tick, *statuses_of(reading, tick))
        )
        truth = {s.instance_id: (key(s), s.rx_bytes) for s in built.instances}
        shaped = diff.shape(built)
        since_full += 1
        must_be_full = (
            reading.engine_down or reading.full_asked or full_due or since_full >= max(full_every, 1)
        )
        assert shaped.partial is not must_be_full
        if not shaped.partial:
            since_full, full_due, first_round = first_round, reading.engine_down, 0
            known = None if reading.engine_down else truth
        else:
            assert known is not None and not shaped.HasField("host")
            for s in shaped.instances:
                if s.state == ABSENT:
                    assert s.instance_id in known and s.instance_id not in truth
                    del known[s.instance_id]
                else:  # only what changed, each in full
                    assert known.get(s.instance_id, (None,))[0] != key(s)
                    known[s.instance_id] = (key(s), s.rx_bytes)
            for c in shaped.counters:  # only counters that moved, of containers whose status did not
                assert (
                    known[c.instance_id][0] == truth[c.instance_id][0]
                    and known[c.instance_id][1] != c.rx_bytes
                )
                known[c.instance_id] = (known[c.instance_id][0], c.rx_bytes)
        assert known == (None if reading.engine_down else truth)
        # The coordinator's queue: this heartbeat merged onto the ones not handled yet says the same.
        domain = translate.heartbeat(shaped)
        merged = domain if merged is None else merged.then(domain)
        if not merged.partial and not merged.engine_error:
            assert {s.instance_id: (s.state.value, s.restarts, s.rx_bytes) for s in merged.instances} == {
                s.instance_id: (translate.status(s).state.value, s.restarts, s.rx_bytes)
                for s in built.instances
            }
