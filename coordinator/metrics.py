"""Prometheus metrics of the coordinator (served by GET /metrics). One registry per process, not the
client library's global one, so tests that build several coordinators in one process stay apart."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Heartbeat timings in seconds: fine steps below the 20 ms goal, coarse above it.
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.heartbeats = Counter(
            "moorage_heartbeats", "Heartbeats received from agents.", registry=self.registry
        )
        self.heartbeat_handling = Histogram(
            "moorage_heartbeat_handling_seconds",
            "From reading a heartbeat off its stream to liveness, metrics and bandwidth being updated.",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.heartbeat_delay = Histogram(
            "moorage_heartbeat_delay_seconds",
            "From the agent sending a heartbeat to the coordinator having handled it (queueing included).",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.sessions = Gauge("moorage_agent_sessions", "Connected agent sessions.", registry=self.registry)
        self.batch_writes = Histogram(
            "moorage_batch_write_seconds",
            "One batch of node heartbeat rows and bandwidth totals written.",
            buckets=BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
