"""Per-instance bandwidth totals from the agents' raw counters.

An agent reports each running container's rx/tx byte counters as its network namespace counts them: they
start at zero whenever the container (re)starts. The coordinator folds them into totals since the instance
was created, so usage survives container restarts, agent restarts and its own restarts. A counter's epoch
is (container id, start time): within one epoch only the growth is added; a new epoch's counters are new
bytes in full. Totals live in memory and reach the database with the batch writer, never per heartbeat.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from coordinator.domain.agents import ContainerState, Counters, InstanceStatus
from coordinator.domain.records import Instance, InstanceState

_FLOWING = frozenset({InstanceState.RUNNING, InstanceState.UNHEALTHY, InstanceState.STARTING})


@dataclass(slots=True)
class Meter:
    rx_total: int = 0
    tx_total: int = 0
    #: The epoch of the raw counters last folded in, and their values then.
    epoch: str = ""
    rx_seen: int = 0
    tx_seen: int = 0
    rx_mbps: float = 0.0
    tx_mbps: float = 0.0
    #: Crash restarts and why its cap is not in force, as its agent's heartbeats say.
    restarts: int = 0
    limit_error: str = ""
    #: A heartbeat of this process reported it (a meter loaded from the row knows only the totals), and
    #: from which node.
    heard: bool = False
    node_id: str = ""

    def advance(self, epoch: str, rx: int, tx: int) -> bool:
        """Fold new raw counters in; whether the totals changed."""
        if epoch == self.epoch and rx >= self.rx_seen and tx >= self.tx_seen:
            grew_rx, grew_tx = rx - self.rx_seen, tx - self.tx_seen
        else:
            # A new container or a restarted one (a new namespace, counting from zero), or counters that
            # went backwards: everything they show is new.
            grew_rx, grew_tx = rx, tx
        self.epoch, self.rx_seen, self.tx_seen = epoch, rx, tx
        self.rx_total += grew_rx
        self.tx_total += grew_tx
        return bool(grew_rx or grew_tx)


def epoch_of(status: InstanceStatus) -> str:
    return f"{status.container_id}:{status.started_at_ms}"


class Bandwidth:
    def __init__(self) -> None:
        self.meters: dict[str, Meter] = {}
        self._dirty: set[str] = set()
        self._retired: set[str] = set()
        #: Instances by the node whose heartbeats last reported them here.
        self._by_node: dict[str, set[str]] = {}

    def load(self, rows: Iterable[tuple[str, int, int, str | None, int, int]]) -> None:
        """At start: (instance id, rx total, tx total, epoch, rx seen, tx seen) of the live instances."""
        for iid, rx, tx, epoch, rx_seen, tx_seen in rows:
            self.meters[iid] = Meter(rx, tx, epoch or "", rx_seen, tx_seen)

    def record(self, node_id: str, statuses: Iterable[InstanceStatus]) -> None:
        """Fold a heartbeat's statuses in; an instance whose totals, rates, restarts or cap error changed
        is written by the next batch."""
        for status in statuses:
            meter = self.meters.get(status.instance_id)
            if meter is None:
                meter = self.meters[status.instance_id] = Meter()
            said = (status.restarts, status.limit_error or "")
            changed = not meter.heard or said != (meter.restarts, meter.limit_error)
            meter.restarts, meter.limit_error = said
            if meter.node_id != node_id:
                self._by_node.get(meter.node_id, set()).discard(status.instance_id)
                self._by_node.setdefault(node_id, set()).add(status.instance_id)
            meter.heard, meter.node_id = True, node_id
            if status.state is ContainerState.RUNNING:
                # (A stopped container reports zeros: its totals stand until it runs again.)
                changed |= (status.rx_mbps, status.tx_mbps) != (meter.rx_mbps, meter.tx_mbps)
                meter.rx_mbps, meter.tx_mbps = status.rx_mbps, status.tx_mbps
                changed |= meter.advance(epoch_of(status), status.rx_bytes, status.tx_bytes)
            if changed:
                self._dirty.add(status.instance_id)

    def count(self, node_id: str, counters: Iterable[Counters]) -> None:
        """Fold a partial heartbeat's counters in: the same run as the container's last status said (a
        new run would have changed its status, which comes in full)."""
        for iid, rx, tx, rx_mbps, tx_mbps in counters:
            meter = self.meters.get(iid)
            if meter is None or meter.node_id != node_id:
                continue  # no status of it heard from this node: nothing to count against
            changed = (rx_mbps, tx_mbps) != (meter.rx_mbps, meter.tx_mbps)
            meter.rx_mbps, meter.tx_mbps = rx_mbps, tx_mbps
            if meter.advance(meter.epoch, rx, tx) or changed:
                self._dirty.add(iid)

    def not_heard(self, node_id: str) -> None:
        """The node's heartbeats no longer come here (its session moved, or it is gone): what this process
        heard of its instances is no longer the freshest word."""
        for iid in self._by_node.pop(node_id, ()):
            meter = self.meters.get(iid)
            if meter is not None and meter.node_id == node_id:
                meter.heard, meter.node_id = False, ""

    def stopped(self, instance_ids: Iterable[str]) -> None:
        """Nothing flows through these any more (stopped, or their node went silent): rates to zero."""
        for iid in instance_ids:
            meter = self.meters.get(iid)
            if meter is not None and (meter.rx_mbps or meter.tx_mbps):
                meter.rx_mbps = meter.tx_mbps = 0.0
                self._dirty.add(iid)

    def retire(self, instance_id: str) -> None:
        """The instance was released: its meter goes after the next batch has written its last totals."""
        self._retired.add(instance_id)

    def overlay(self, inst: Instance) -> Instance:
        """The instance with the freshest totals (the row may lag by one batch period) and current rates."""
        meter = self.meters.get(inst.id)
        # Nothing heard here (its node's session is elsewhere, or not back yet): the row has the rest.
        heard = meter if meter is not None and meter.heard else None
        rates = (heard.rx_mbps, heard.tx_mbps) if heard is not None else (inst.rx_mbps, inst.tx_mbps)
        if inst.state not in _FLOWING:
            rates = (0.0, 0.0)
        return replace(
            inst,
            rx_bytes=max(meter.rx_total if meter is not None else 0, inst.rx_bytes),
            tx_bytes=max(meter.tx_total if meter is not None else 0, inst.tx_bytes),
            rx_mbps=rates[0],
            tx_mbps=rates[1],
            restarts=heard.restarts if heard is not None else inst.restarts,
            limit_error=(heard.limit_error or None) if heard is not None else inst.limit_error,
        )

    def take_dirty(self) -> dict[str, dict[str, Any]]:
        batch = {
            iid: {
                "rx_bytes": m.rx_total,
                "tx_bytes": m.tx_total,
                "net_epoch": m.epoch,
                "net_rx_seen": m.rx_seen,
                "net_tx_seen": m.tx_seen,
                "rx_mbps": m.rx_mbps,
                "tx_mbps": m.tx_mbps,
                "restarts": m.restarts,
                "limit_error": m.limit_error[:2000] or None,
            }
            for iid in self._dirty
            if (m := self.meters.get(iid)) is not None
        }
        self._dirty.clear()
        for iid in self._retired:
            gone = self.meters.pop(iid, None)
            if gone is not None:
                self._by_node.get(gone.node_id, set()).discard(iid)
        self._retired.clear()
        return batch
