"""The heartbeat statistics are kept without the client library's locks; their exposition must still be
what Prometheus reads: cumulative buckets, a count, a sum."""

from __future__ import annotations

from coordinator.metrics import Metrics


def test_heartbeat_histograms_are_cumulative_and_count_every_heartbeat() -> None:
    metrics = Metrics()
    for handling, delay, partial, statuses in [
        (0.0003, 0.004, False, 5),
        (0.0003, None, True, 0),
        (0.012, 3.0, True, 1),
    ]:
        metrics.heartbeats.observe(handling, delay, partial, statuses)
    lines = dict(line.rsplit(" ", 1) for line in metrics.render().decode().splitlines() if line[0] != "#")
    assert float(lines["moorage_heartbeats_total"]) == 3
    assert float(lines["moorage_heartbeats_partial_total"]) == 2
    assert float(lines['moorage_heartbeat_statuses_total{kind="full"}']) == 5
    assert float(lines['moorage_heartbeat_statuses_total{kind="partial"}']) == 1
    h = "moorage_heartbeat_handling_seconds"
    assert float(lines[f'{h}_bucket{{le="0.0005"}}']) == 2
    assert float(lines[f'{h}_bucket{{le="0.01"}}']) == 2
    assert float(lines[f'{h}_bucket{{le="0.015"}}']) == 3
    assert float(lines[f'{h}_bucket{{le="+Inf"}}']) == 3
    assert abs(float(lines[f"{h}_sum"]) - 0.0126) < 1e-9
    d = "moorage_heartbeat_delay_seconds"
    assert float(lines[f'{d}_bucket{{le="2.5"}}']) == 1  # the late one falls only in +Inf
    assert float(lines[f"{d}_count"]) == 2
