"""Host metrics (psutil) and per-container network counters.

Container counters come from the container's own network namespace, ``/proc/<pid>/net/dev``: one small
file read per container instead of ``docker stats``, which takes about two seconds per container.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil


def read_net_dev(pid: int, proc: Path = Path("/proc")) -> tuple[int, int] | None:
    """(rx bytes, tx bytes) summed over the namespace's interfaces except loopback; None if gone."""
    try:
        lines = (proc / str(pid) / "net" / "dev").read_text().splitlines()[2:]
    except OSError:
        return None
    rx = tx = 0
    for line in lines:
        name, _, data = line.partition(":")
        if name.strip() == "lo":
            continue
        cols = data.split()
        if len(cols) >= 9:
            rx += int(cols[0])
            tx += int(cols[8])
    return rx, tx


@dataclass(slots=True)
class _Counter:
    at: float
    rx: int
    tx: int


@dataclass
class Telemetry:
    disk_path: str = "/"
    _host_prev: _Counter | None = None
    _containers: dict[str, _Counter] = field(default_factory=dict)

    def capacity(self, memory_mib: int, disk_mib: int, cpu_count: int) -> dict[str, int]:
        """The host's capacity as the protocol's Capacity fields (configured values win)."""
        return {
            "memory_mib": memory_mib or psutil.virtual_memory().total // 2**20,
            "disk_mib": disk_mib or psutil.disk_usage(self.disk_path).total // 2**20,
            "cpu_count": cpu_count or os.cpu_count() or 1,
        }

    def host(self) -> dict[str, Any]:
        """The protocol's HostMetrics fields. Blocking but quick (no sampling sleeps); called from a worker
        thread."""
        now = time.monotonic()
        vm = psutil.virtual_memory()
        disk = psutil.disk_usage(self.disk_path)
        net = psutil.net_io_counters()
        rx_mbps = tx_mbps = 0.0
        if self._host_prev is not None and now > self._host_prev.at:
            dt = now - self._host_prev.at
            rx_mbps = max(net.bytes_recv - self._host_prev.rx, 0) * 8 / dt / 1e6
            tx_mbps = max(net.bytes_sent - self._host_prev.tx, 0) * 8 / dt / 1e6
        self._host_prev = _Counter(now, net.bytes_recv, net.bytes_sent)
        load1, load5, load15 = os.getloadavg()
        return {
            "cpu_percent": psutil.cpu_percent(interval=None),
            "memory_used_mib": (vm.total - vm.available) // 2**20,
            "memory_total_mib": vm.total // 2**20,
            "disk_used_mib": disk.used // 2**20,
            "disk_total_mib": disk.total // 2**20,
            "load1": load1,
            "load5": load5,
            "load15": load15,
            "net_rx_mbps": rx_mbps,
            "net_tx_mbps": tx_mbps,
        }

    def keep_only(self, container_ids: set[str]) -> None:
        """Drop the counters of containers that are gone: the agent lives for months beside containers
        that come and go, and nothing else would ever remove them."""
        for gone in self._containers.keys() - container_ids:
            del self._containers[gone]

    def container_network(self, container_id: str, pid: int) -> tuple[int, int, float, float]:
        """(rx bytes, tx bytes, rx Mbps, tx Mbps) of a running container since its namespace was created.
        A restarted container starts from zero; the coordinator keeps the totals across that."""
        counters = read_net_dev(pid) if pid > 0 else None
        if counters is None:
            self._containers.pop(container_id, None)
            return 0, 0, 0.0, 0.0
        now = time.monotonic()
        rx, tx = counters
        prev = self._containers.get(container_id)
        rx_mbps = tx_mbps = 0.0
        if prev is not None and now > prev.at and rx >= prev.rx and tx >= prev.tx:
            rx_mbps = (rx - prev.rx) * 8 / (now - prev.at) / 1e6
            tx_mbps = (tx - prev.tx) * 8 / (now - prev.at) / 1e6
        self._containers[container_id] = _Counter(now, rx, tx)
        return rx, tx, rx_mbps, tx_mbps
