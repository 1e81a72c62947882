"""Prometheus metrics of the coordinator (served by GET /metrics). One registry per process, not the
client library's global one, so tests that build several coordinators in one process stay apart."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

#: Heartbeat timings in seconds: fine steps below the 20 ms goal, coarse above it.
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class HeartbeatStats(Collector):
    """Per-heartbeat counts and timings, kept in plain ints: the client library's Counter and Histogram take
    a lock per update, a cost paid thousands of times a second on the event loop (which is the only
    writer, so no lock is needed). Exposed in the same Prometheus shapes."""

    def __init__(self) -> None:
        self.count = 0
        self.partial = 0
        #: Container statuses carried, by full and by partial heartbeats.
        self.statuses = {False: 0, True: 0}
        self.handling = _Buckets()
        self.delay = _Buckets()

    def observe(self, handling_s: float, delay_s: float | None, partial: bool, statuses: int) -> None:
        self.count += 1
        self.partial += partial
        self.statuses[partial] += statuses
        self.handling.observe(handling_s)
        if delay_s is not None:
            self.delay.observe(delay_s)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("moorage_heartbeats", "Heartbeats received from agents.", value=self.count)
        yield CounterMetricFamily(
            "moorage_heartbeats_partial",
            "Heartbeats that said only which containers changed (the others were full reports).",
            value=self.partial,
        )
        statuses = CounterMetricFamily(
            "moorage_heartbeat_statuses",
            "Container statuses heartbeats carried: a full one every container, a partial one those changed.",
            labels=["kind"],
        )
        statuses.add_metric(["full"], self.statuses[False])
        statuses.add_metric(["partial"], self.statuses[True])
        yield statuses
        yield self.handling.family(
            "moorage_heartbeat_handling_seconds",
            "From reading a heartbeat off its stream to liveness, metrics and bandwidth being updated.",
        )
        yield self.delay.family(
            "moorage_heartbeat_delay_seconds",
            "From the agent sending a heartbeat to the coordinator having handled it (queueing included).",
        )


class _Buckets:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip([*BUCKETS, float("inf")], self.counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return HistogramMetricFamily(name, documentation, buckets=cumulative, sum_value=self.total)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.heartbeats = HeartbeatStats()
        self.registry.register(self.heartbeats)
        self.sessions = Gauge("moorage_agent_sessions", "Connected agent sessions.", registry=self.registry)
        self.batch_writes = Histogram(
            "moorage_batch_write_seconds",
            "One batch of node heartbeat rows and bandwidth totals written.",
            buckets=BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
