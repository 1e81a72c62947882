"""Bandwidth totals from raw namespace counters: restarts of the container, the agent and the coordinator
neither lose nor double-count bytes."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from coordinator.domain.agents import ContainerState, Counters, InstanceStatus
from coordinator.fleet.bandwidth import Bandwidth
from tests.unit.factories import make_instance


def status(rx: int, tx: int, container: str = "c1", started: int = 1, running: bool = True) -> InstanceStatus:
    return InstanceStatus(
        instance_id="i1",
        container_id=container,
        started_at_ms=started,
        state=ContainerState.RUNNING if running else ContainerState.EXITED,
        rx_bytes=rx,
        tx_bytes=tx,
        rx_mbps=1.5,
        tx_mbps=2.5,
    )


def totals(meters: Bandwidth) -> tuple[int, int]:
    m = meters.meters["i1"]
    return m.rx_total, m.tx_total


def test_growth_restarts_and_a_coordinator_restart() -> None:
    meters = Bandwidth()
    meters.record("n1", [status(100, 1000)])
    meters.record("n1", [status(150, 1500)])
    assert totals(meters) == (150, 1500)
    meters.record("n1", [status(0, 0, running=False)])  # exited: zeros ignored, totals stand
    meters.record("n1", [status(40, 400, started=2)])  # restarted: a new namespace counting from zero
    assert totals(meters) == (190, 1900)
    written = meters.take_dirty()["i1"]
    assert written["rx_bytes"] == 190 and written["net_epoch"] == "c1:2" and meters.take_dirty() == {}
    # The coordinator restarts: meters come back from the rows; the same counters again add nothing.
    again = Bandwidth()
    again.load([("i1", 190, 1900, "c1:2", 40, 400)])
    again.record("n1", [status(40, 400, started=2)])
    assert totals(again) == (190, 1900)
    # Written once (its rates and restarts are news to the row), then not while nothing changes.
    assert again.take_dirty()["i1"]["rx_bytes"] == 190
    again.record("n1", [status(40, 400, started=2)])
    assert again.take_dirty() == {}
    again.record("n1", [status(50, 450, started=2)])
    assert totals(again) == (200, 1950)
    shown = again.overlay(make_instance("i1", state="running"))
    assert (shown.rx_bytes, shown.tx_bytes, shown.rx_mbps, shown.tx_mbps) == (200, 1950, 1.5, 2.5)
    assert again.overlay(make_instance("i1", state="stopped")).rx_mbps == 0.0


def test_a_partial_heartbeats_counters_count_in_the_run_its_last_status_named() -> None:
    meters = Bandwidth()
    meters.record("n1", [status(100, 1000)])
    meters.take_dirty()
    meters.count("n1", [Counters("i1", 160, 1600, 3.0, 4.0)])
    assert totals(meters) == (160, 1600)
    assert meters.take_dirty()["i1"]["rx_mbps"] == 3.0
    meters.count("n1", [Counters("i1", 160, 1600, 3.0, 4.0)])  # nothing moved: nothing to write
    assert meters.take_dirty() == {}
    meters.count("n2", [Counters("i1", 999, 9999, 0.0, 0.0)])  # not the node its status came from
    meters.count("n1", [Counters("i9", 5, 5, 0.0, 0.0)])  # no status of it heard
    assert totals(meters) == (160, 1600) and "i9" not in meters.meters
    meters.record("n1", [status(10, 100, started=2)])  # the next run comes as a status, then its counters
    meters.count("n1", [Counters("i1", 30, 300, 0.0, 0.0)])
    assert totals(meters) == (190, 1900)


def test_a_released_instance_keeps_its_last_totals_then_its_meter_goes() -> None:
    meters = Bandwidth()
    meters.record("n1", [status(10, 20)])
    meters.retire("i1")
    assert meters.take_dirty()["i1"]["tx_bytes"] == 20
    assert "i1" not in meters.meters


# Each epoch (a container start) is a list of growing counter samples; the last one is its final count.
epochs = st.lists(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1, max_size=6),
    min_size=1,
    max_size=6,
)


@given(epochs, st.integers(0, 40))
def test_totals_are_the_sum_of_every_epochs_final_counters(
    samples: list[list[tuple[int, int]]], cut: int
) -> None:
    meters = Bandwidth()
    expected_rx = expected_tx = 0
    seen = 0
    for epoch, increments in enumerate(samples):
        rx = tx = 0
        for add_rx, add_tx in increments:
            rx, tx = rx + add_rx, tx + add_tx
            meters.record("n1", [status(rx, tx, started=epoch)])
            seen += 1
            if seen == cut:  # the coordinator restarts here, from what the batch writer stored
                meters.take_dirty()
                m = meters.meters["i1"]
                restored = Bandwidth()
                restored.load([("i1", m.rx_total, m.tx_total, m.epoch, m.rx_seen, m.tx_seen)])
                meters = restored
        expected_rx, expected_tx = expected_rx + rx, expected_tx + tx
    assert totals(meters) == (expected_rx, expected_tx)


def test_what_a_holder_heard_is_written_and_read_where_the_node_is_not_held() -> None:
    """Rates, crash restarts and a cap error reach the row with the batch; a coordinator that hears no
    heartbeats of the node (another holds its session) shows the row, and one whose node moved away stops
    showing its own older word."""
    holder = Bandwidth()
    holder.record("n1", [replace(status(10, 20), restarts=3, limit_error="tc: not permitted")])
    row = holder.take_dirty()["i1"]
    assert (row["rx_mbps"], row["tx_mbps"], row["restarts"], row["limit_error"]) == (
        1.5,
        2.5,
        3,
        "tc: not permitted",
    )
    stored = replace(
        make_instance("i1", state="running"), rx_mbps=1.5, tx_mbps=2.5, restarts=3, limit_error="x"
    )
    elsewhere = Bandwidth()
    elsewhere.load([("i1", 10, 20, "c1:1", 10, 20)])
    shown = elsewhere.overlay(stored)
    assert (shown.rx_mbps, shown.restarts, shown.limit_error) == (1.5, 3, "x")
    assert holder.overlay(stored).limit_error == "tc: not permitted"  # its own, fresher word
    holder.not_heard("n1")  # the session moved away from the holder
    assert holder.overlay(stored).limit_error == "x"
