"""The heartbeat statistics are kept without the client library's locks; their exposition must still be
what Prometheus reads: cumulative buckets, a count, a sum."""

from __future__ import annotations

from coordinator.metrics import Metrics


def test_heartbeat_histograms_are_cumulative_and_count_every_heartbeat() -> None:
    metrics = Metrics()
    for handling, delay in [(0.0003, 0.004), (0.0003, None), (0.012, 3.0)]:
        metrics.heartbeats.observe(handling, delay)
    lines = dict(line.rsplit(" ", 1) for line in metrics.render().decode().splitlines() if line[0] != "#")
    assert float(lines["moorage_heartbeats_total"]) == 3
    h = "moorage_heartbeat_handling_seconds"
    assert float(lines[f'{h}_bucket{{le="0.0005"}}']) == 2
    assert float(lines[f'{h}_bucket{{le="0.01"}}']) == 2
    assert float(lines[f'{h}_bucket{{le="0.015"}}']) == 3
    assert float(lines[f'{h}_bucket{{le="+Inf"}}']) == 3
    assert abs(float(lines[f"{h}_sum"]) - 0.0126) < 1e-9
    d = "moorage_heartbeat_delay_seconds"
    assert float(lines[f'{d}_bucket{{le="2.5"}}']) == 1  # the late one falls only in +Inf
    assert float(lines[f"{d}_count"]) == 2
