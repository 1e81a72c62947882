"""The scheduler's view of the fleet (as Nomad's schedulers work on a state snapshot): node capacities and
usage per region, in memory, so a decision costs no database read. It may lag the database by up to
``ttl_s``; that only affects which candidates are offered, because the claim re-checks everything in its
transaction. A region whose claim was lost is re-read at once, and our own claims are applied as they
commit, so a burst of deploys sees its own effects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from coordinator.placement import NodeInfo, RegionInfo, Snapshot, region_chain
from coordinator.store import regions as regions_store
from coordinator.store.engine import Store


@dataclass
class _Loaded:
    at: float
    nodes: dict[str, NodeInfo]


class PlacementSnapshot:
    def __init__(self, store: Store, ttl_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock
        self._regions: tuple[float, dict[str, RegionInfo]] | None = None
        self._nodes: dict[str, _Loaded] = {}
        self._reloading = asyncio.Lock()

    async def regions(self) -> dict[str, RegionInfo]:
        if self._regions is None or self.clock() - self._regions[0] > self.ttl_s:
            async with self.store.read() as conn:
                found = {r.id: r.info() for r in await regions_store.list_regions(conn)}
            self._regions = (self.clock(), found)
        return self._regions[1]

    async def find(self, key: str) -> RegionInfo | None:
        """A region by id or identifier (re-reading once when the cached list does not know it)."""
        for attempt in range(2):
            regions = await self.regions()
            found = regions.get(key) or next((r for r in regions.values() if r.identifier == key), None)
            if found is not None or attempt:
                return found
            self._regions = None
        return None

    def _stale(self, region_id: str) -> bool:
        loaded = self._nodes.get(region_id)
        return loaded is None or self.clock() - loaded.at > self.ttl_s

    async def for_chain(self, start: str, ready: set[str]) -> Snapshot:
        """Regions along the chain from ``start`` with their nodes, readiness from the live fleet."""
        regions = await self.regions()
        chain = region_chain(start, regions)
        if any(self._stale(r.id) for r in chain):
            # One reader at a time: a burst of deploys must not re-read the same regions thirty times over.
            async with self._reloading:
                stale = [r.id for r in chain if self._stale(r.id)]
                if stale:
                    async with self.store.read() as conn:
                        infos = await regions_store.node_infos(conn, region_ids=stale)
                    now = self.clock()
                    fresh: dict[str, _Loaded] = {rid: _Loaded(now, {}) for rid in stale}
                    for info in infos:
                        fresh[info.region_id or ""].nodes[info.id] = info
                    self._nodes.update(fresh)
        return Snapshot(regions, {r.id: list(self._nodes[r.id].nodes.values()) for r in chain}, ready)

    def claimed(self, region_id: str, node: NodeInfo, memory: int, cpu: int, disk: int, ports: int) -> None:
        """Apply a committed claim to the cached view."""
        loaded = self._nodes.get(region_id)
        if loaded is not None and node.id in loaded.nodes:
            n = loaded.nodes[node.id]
            loaded.nodes[node.id] = replace(
                n,
                used_memory_mib=n.used_memory_mib + memory,
                used_cpu_percent=n.used_cpu_percent + cpu,
                used_disk_mib=n.used_disk_mib + disk,
                free_port_count=n.free_port_count - ports,
            )
        if self._regions is not None and region_id in self._regions[1]:
            r = self._regions[1][region_id]
            self._regions[1][region_id] = replace(r, live_count=r.live_count + 1)

    def forget(self, region_id: str | None = None) -> None:
        """Re-read (a region, or everything) on the next decision: a claim there was lost."""
        if region_id is None:
            self._nodes.clear()
            self._regions = None
        else:
            self._nodes.pop(region_id, None)
            self._regions = None
