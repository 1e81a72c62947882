"""The agent's own metrics, in Prometheus' text format on a local address (``metrics_listen``, default
127.0.0.1:9104): whether its session is up, what it sent and handled, what runs, what each instance moved,
how long the engine takes to answer, and its own footprint (RSS, open files, threads, asyncio tasks), so an
operator sees trouble, growth included, before it hurts.

Served by prometheus_client's own HTTP thread: a scrape never waits on the event loop, and the loop never
waits on a scrape."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from common.logging import get

log = get("agent.metrics")

#: Seconds: engine calls are milliseconds to a few seconds (a pull, a stop with its grace).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class AgentMetrics:
    """Every figure the agent serves. ``enabled`` False (no listen address, or one agent of many in a test
    process) keeps nothing: each method returns at once."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry()
        self._instances: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        if not enabled:
            return
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.session = Gauge(
            "moorage_agent_session_connected", "1 while a session with a coordinator is open.", registry=r
        )
        self.heartbeats = Counter(
            "moorage_agent_heartbeats_sent", "Heartbeats written to the coordinator.", registry=r
        )
        self.reconnects = Counter("moorage_agent_reconnects", "Sessions lost and tried again.", registry=r)
        self.commands = Counter(
            "moorage_agent_commands",
            "Commands handled, by kind and outcome.",
            ["kind", "outcome"],
            registry=r,
        )
        self.command_seconds = Histogram(
            "moorage_agent_command_duration_seconds",
            "Time from a command's arrival to its result, by kind.",
            ["kind"],
            buckets=BUCKETS,
            registry=r,
        )
        self.containers = Gauge(
            "moorage_agent_containers", "Labelled containers on the host, by state.", ["state"], registry=r
        )
        self.rx = Gauge(
            "moorage_agent_instance_rx_bytes",
            "Bytes the instance's current container has received (from zero at each container start).",
            ["instance"],
            registry=r,
        )
        self.tx = Gauge(
            "moorage_agent_instance_tx_bytes",
            "Bytes the instance's current container has sent (from zero at each container start).",
            ["instance"],
            registry=r,
        )
        self.docker_seconds = Histogram(
            "moorage_agent_docker_call_duration_seconds",
            "Time the container engine took to answer, by call.",
            ["call"],
            buckets=BUCKETS,
            registry=r,
        )
        tasks = Gauge("moorage_agent_asyncio_tasks", "Tasks alive on the agent's event loop.", registry=r)
        tasks.set_function(self._task_count)
        threads = Gauge("moorage_agent_threads", "Threads of the agent process.", registry=r)
        threads.set_function(threading.active_count)

    def serve(self, listen: str) -> None:
        """Serve on HOST:PORT from a thread of its own; a port that cannot be had is logged, not fatal (the
        agent's work matters more than its figures)."""
        if not self.enabled:
            return
        self._loop = asyncio.get_running_loop()
        host, _, port = listen.rpartition(":")
        try:
            start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry)
        except OSError as exc:
            log.warning("metrics not served", listen=listen, error=exc.strerror or str(exc))
            return
        log.info("metrics served", listen=listen)

    def _task_count(self) -> float:
        loop = self._loop
        return float(len(asyncio.all_tasks(loop))) if loop is not None else 0.0

    # ------------------------------------------------------------ what the agent reports

    def connected(self, up: bool) -> None:
        if self.enabled:
            self.session.set(1 if up else 0)

    def heartbeat_sent(self) -> None:
        if self.enabled:
            self.heartbeats.inc()

    def reconnecting(self) -> None:
        if self.enabled:
            self.reconnects.inc()

    def command(self, kind: str, ok: bool, seconds: float) -> None:
        if self.enabled:
            self.commands.labels(kind, "ok" if ok else "failed").inc()
            self.command_seconds.labels(kind).observe(seconds)

    def docker_call(self, call: str, seconds: float) -> None:
        """From the engine's thread pool (prometheus_client's metrics take their own locks)."""
        if self.enabled:
            self.docker_seconds.labels(call).observe(seconds)

    def containers_seen(self, states: Iterable[tuple[str, str, int, int]]) -> None:
        """(instance id, state, rx bytes, tx bytes) of every labelled container, as a heartbeat found them:
        instances gone since the last one are dropped, so the series do not grow with churn."""
        if not self.enabled:
            return
        counts: dict[str, int] = {}
        seen: set[str] = set()
        for instance_id, state, rx, tx in states:
            counts[state] = counts.get(state, 0) + 1
            seen.add(instance_id)
            self.rx.labels(instance_id).set(rx)
            self.tx.labels(instance_id).set(tx)
        for gone in self._instances - seen:
            self.rx.remove(gone)
            self.tx.remove(gone)
        self._instances = seen
        for state in {*counts, *_states(self.containers)}:
            self.containers.labels(state).set(counts.get(state, 0))


def _states(gauge: Gauge) -> set[str]:
    return {sample.labels["state"] for metric in gauge.collect() for sample in metric.samples}
