"""The agent's own metrics, in Prometheus' text format on a local address (``metrics_listen``, default
127.0.0.1:9104): whether its session is up, what it sent and handled, what runs, what each instance moved,
how long the engine takes to answer, and its own footprint (RSS, open files, threads, asyncio tasks, the C
heap in use and free), so an operator sees trouble, growth included, before it hurts.

Served from a thread of its own (agent/exposition.py): a scrape never waits on the event loop, and the loop
never waits on a scrape."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

from agent.exposition import Counter, Family, Gauge, Histogram, MetricsServer, ProcessFigures, python_info
from agent.heap import HeapUsage, heap_usage
from common.logging import get

log = get("agent.metrics")

#: Seconds: engine calls are milliseconds to a few seconds (a pull, a stop with its grace).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _heap() -> HeapUsage:
    usage = heap_usage()
    assert usage is not None, "served only where the C library reports its heap"
    return usage


class AgentMetrics:
    """Every figure the agent serves. ``enabled`` False (no listen address, or one agent of many in a test
    process) keeps nothing: each method returns at once."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._instances: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: MetricsServer | None = None
        self.session = Gauge(
            "moorage_agent_session_connected", "1 while a session with a coordinator is open."
        )
        self.heartbeats = Counter("moorage_agent_heartbeats_sent", "Heartbeats written to the coordinator.")
        self.reconnects = Counter("moorage_agent_reconnects", "Sessions lost and tried again.")
        self.commands = Counter(
            "moorage_agent_commands", "Commands handled, by kind and outcome.", ("kind", "outcome")
        )
        self.command_seconds = Histogram(
            "moorage_agent_command_duration_seconds",
            "Time from a command's arrival to its result, by kind.",
            ("kind",),
            BUCKETS,
        )
        self.containers = Gauge(
            "moorage_agent_containers", "Labelled containers on the host, by state.", ("state",)
        )
        self.rx = Gauge(
            "moorage_agent_instance_rx_bytes",
            "Bytes the instance's current container has received (from zero at each container start).",
            ("instance",),
        )
        self.tx = Gauge(
            "moorage_agent_instance_tx_bytes",
            "Bytes the instance's current container has sent (from zero at each container start).",
            ("instance",),
        )
        self.docker_seconds = Histogram(
            "moorage_agent_docker_call_duration_seconds",
            "Time the container engine took to answer, by call.",
            ("call",),
            BUCKETS,
        )
        self.families: list[Family] = [
            ProcessFigures(),
            python_info(),
            self.session,
            self.heartbeats,
            self.reconnects,
            self.commands,
            self.command_seconds,
            self.containers,
            self.rx,
            self.tx,
            self.docker_seconds,
            Gauge(
                "moorage_agent_asyncio_tasks", "Tasks alive on the agent's event loop.", read=self._task_count
            ),
            Gauge("moorage_agent_threads", "Threads of the agent process.", read=threading.active_count),
        ]
        if heap_usage() is not None:  # glibc: in use vs free tells a leak from fragmentation
            self.families += [
                Gauge(
                    "moorage_agent_heap_in_use_bytes",
                    "Bytes of the C heap in live blocks, every malloc arena summed (glibc mallinfo2).",
                    read=lambda: float(_heap().in_use),
                ),
                Gauge(
                    "moorage_agent_heap_free_bytes",
                    "Bytes free in the C heap's arenas, kept for reuse (resident or not).",
                    read=lambda: float(_heap().free),
                ),
            ]

    def serve(self, listen: str) -> None:
        """Serve on HOST:PORT from a thread of its own; a port that cannot be had is logged, not fatal (the
        agent's work matters more than its figures)."""
        if not self.enabled:
            return
        self._loop = asyncio.get_running_loop()
        host, _, port = listen.rpartition(":")
        try:
            self._server = MetricsServer(self.families, host.strip("[]") or "127.0.0.1", int(port))
        except OSError as exc:
            log.warning("metrics not served", listen=listen, error=exc.strerror or str(exc))
            return
        log.info("metrics served", listen=listen)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

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
            self.commands.inc(kind, "ok" if ok else "failed")
            self.command_seconds.observe(seconds, kind)

    def docker_call(self, call: str, seconds: float) -> None:
        if self.enabled:
            self.docker_seconds.observe(seconds, call)

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
            self.rx.set(rx, instance_id)
            self.tx.set(tx, instance_id)
        for gone in self._instances - seen:
            self.rx.remove(gone)
            self.tx.remove(gone)
        self._instances = seen
        for (state,) in {*((s,) for s in counts), *self.containers.values}:
            self.containers.set(counts.get(state, 0), state)
