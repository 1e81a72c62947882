"""The scheduler's view of the fleet (as Nomad's schedulers work on a state snapshot): regions and, per
region, node capacities and usage in spread order, in memory, so a decision costs no database read.

The view is kept current by our own claims as they commit, re-read after an admin change (``forget``) and
re-read when older than ``ttl_s`` (by whichever deploy finds it stale; the others go on with the view they
have). It can still lag the database (an instance released, another coordinator's claim), and that is safe
both ways: a node that looks emptier than it is loses its claim (the transaction re-checks everything) and
is re-read at once; a region that looks fuller than it is is re-read before anyone is refused.

It reads through a SnapshotSource (the store implements it: store/regions.py SnapshotReads), so placement
knows no database."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from coordinator.placement.scheduler import NodeInfo, RankedNodes, RegionInfo, Snapshot, region_chain


class SnapshotSource(Protocol):
    async def regions_and_nodes(
        self, region_ids: Sequence[str]
    ) -> tuple[dict[str, RegionInfo], list[NodeInfo]]:
        """Every region, and the nodes of ``region_ids``, in one consistent read."""
        ...

    async def node_and_region(
        self, node_id: str, region_id: str
    ) -> tuple[NodeInfo | None, RegionInfo | None]: ...


@dataclass
class _Region:
    loaded_at: float
    nodes: RankedNodes


class PlacementSnapshot:
    def __init__(
        self,
        source: SnapshotSource,
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.source = source
        self.ttl_s = ttl_s
        self.clock = clock
        self._rng = rng or random.Random()
        self._regions: dict[str, RegionInfo] = {}
        self._identifiers: dict[str, str] = {}
        self._regions_at: float | None = None
        self._nodes: dict[str, _Region] = {}
        #: The chain of region ids from each start, as last walked (the fallbacks change only on a load).
        self._chains: dict[str, list[str]] = {}
        self._loading = asyncio.Lock()

    # ------------------------------------------------------------------ reading

    async def regions(self, fresh_since: float | None = None) -> dict[str, RegionInfo]:
        await self._ensure((), fresh_since)
        return self._regions

    def _lookup(self, key: str) -> RegionInfo | None:
        found = self._regions.get(key) or self._regions.get(self._identifiers.get(key, ""))
        if found is None and len(key) == 2 and key.isalpha():
            # A country (ISO-3166 alpha-2): its region with room first, then by identifier, so the same
            # answer comes back while nothing changes. The chain then follows that region's fallbacks.
            country = [r for r in self._regions.values() if (r.country_id or "").upper() == key.upper()]
            found = min(country, key=lambda r: (r.full, r.identifier), default=None)
        return found

    async def find(self, key: str) -> RegionInfo | None:
        """A region by id, identifier or country code (re-reading once when the view does not know it)."""
        if self._regions_at is not None and self.clock() - self._regions_at <= self.ttl_s:
            found = self._lookup(key)
            if found is not None:
                return found
        for fresh_since in (None, self.clock()):
            await self.regions(fresh_since)
            found = self._lookup(key)
            if found is not None:
                return found
        return None

    async def for_chain(self, start: str, ready: set[str], fresh_since: float | None = None) -> Snapshot:
        """The regions along the chain from ``start`` with their nodes; readiness from the live fleet.
        ``fresh_since``: every part must have been read from the database after that moment."""
        known = self._chains.get(start) if fresh_since is None else None
        if known is not None and self._within_ttl(known):
            return Snapshot(self._regions, {rid: self._nodes[rid].nodes for rid in known}, ready)
        chain = region_chain(start, await self.regions(fresh_since))
        await self._ensure([r.id for r in chain], fresh_since)
        # The load may have changed the fallbacks; walk the chain again over what was read.
        chain = region_chain(start, self._regions)
        await self._ensure([r.id for r in chain], fresh_since)
        nodes = {r.id: self._nodes[r.id].nodes for r in chain if r.id in self._nodes}
        if len(nodes) == len(chain):
            self._chains[start] = list(nodes)
        return Snapshot(self._regions, nodes, ready)

    def _read_since(self, region_id: str | None, moment: float) -> bool:
        """Whether the region list (None) or that region's nodes were read at or after ``moment``."""
        if region_id is None:
            at = self._regions_at
        else:
            loaded = self._nodes.get(region_id)
            at = loaded.loaded_at if loaded is not None else None
        return at is not None and at >= moment

    def _within_ttl(self, region_ids: Sequence[str]) -> bool:
        """Whether the region list and every one of these regions were read within the TTL."""
        horizon = self.clock() - self.ttl_s
        return self._read_since(None, horizon) and all(self._read_since(rid, horizon) for rid in region_ids)

    def _missing(self, region_ids: Sequence[str], fresh_since: float | None) -> list[str] | None:
        """Regions that must be read before deciding (None: the region list itself must be)."""
        since = float("-inf") if fresh_since is None else fresh_since
        if not self._read_since(None, since):
            return None
        return [rid for rid in region_ids if not self._read_since(rid, since)]

    def _stale(self, region_ids: Sequence[str]) -> list[str] | None:
        """Regions read, but longer ago than the TTL (None: nothing to refresh)."""
        horizon = self.clock() - self.ttl_s
        if not self._read_since(None, horizon):
            return [rid for rid in region_ids if rid in self._nodes or rid in self._regions]
        stale = [rid for rid in region_ids if rid in self._nodes and not self._read_since(rid, horizon)]
        return stale or None

    async def _ensure(self, region_ids: Sequence[str], fresh_since: float | None) -> None:
        missing = self._missing(region_ids, fresh_since)
        if missing is None or missing:
            async with self._loading:  # one reader at a time; a load in flight may already be enough
                missing = self._missing(region_ids, fresh_since)
                if missing is None or missing:
                    await self._load(region_ids if missing is None else missing)
            return
        stale = self._stale(region_ids)
        if stale is not None and not self._loading.locked():
            # Old but usable: this caller refreshes it; everyone else goes on with the view as it is.
            async with self._loading:
                await self._load(stale)

    async def _load(self, region_ids: Sequence[str]) -> None:
        began = self.clock()
        found, infos = await self.source.regions_and_nodes(region_ids)
        fresh = {rid: _Region(began, RankedNodes(rng=self._rng)) for rid in region_ids if rid in found}
        for info in infos:
            if info.region_id in fresh:
                fresh[info.region_id].nodes.put(info)
        for rid in region_ids:
            self._nodes.pop(rid, None)
        self._nodes.update(fresh)
        self._regions = found
        self._chains.clear()
        self._identifiers = {r.identifier: r.id for r in found.values()}
        self._regions_at = began

    # ------------------------------------------------------------------ keeping it current

    def claimed(self, region_id: str, node: NodeInfo, memory: int, cpu: int, disk: int, ports: int) -> None:
        """Apply a committed claim to the view."""
        loaded = self._nodes.get(region_id)
        current = loaded.nodes.get(node.id) if loaded is not None else None
        if loaded is not None and current is not None:
            loaded.nodes.put(current.plus(memory, cpu, disk, ports))
        region = self._regions.get(region_id)
        if region is not None:
            self._regions[region_id] = replace(region, live_count=region.live_count + 1)

    async def lost(self, region_id: str, node_id: str) -> None:
        """A claim on this node lost its race: re-read the node and its region, nothing more."""
        info, region = await self.source.node_and_region(node_id, region_id)
        loaded = self._nodes.get(region_id)
        if loaded is not None:
            loaded.nodes.discard(node_id)
            if info is not None and info.region_id == region_id:
                loaded.nodes.put(info)
        if region is not None:
            self._regions[region_id] = region

    def forget(self) -> None:
        """Re-read everything before the next decision (an admin changed nodes, allocations or regions)."""
        self._nodes.clear()
        self._chains.clear()
        self._regions_at = None
