"""Placement: a pure function from (request, snapshot) to a ranked list of candidates or a reasoned
refusal. No I/O and no clock: the use case builds the snapshot, and claims the candidates in order in one
short transaction each (a lost race moves on to the next).

The region chain: the asked region, its fallback, that one's fallback... stopping at a repeat (cycles are
legal to configure) or after MAX_HOPS. A region at its serverLimit is skipped. Within a region, candidates
are Ready nodes (fresh heartbeat, not in maintenance, shared or dedicated to the instance's organization)
carrying every asked tag, with the memory, CPU and disk free (the node's overallocation counted) and the
ports free. Spread puts the node with the largest free-memory fraction first, binpack the smallest; ties
are broken at random.

A region's nodes may come as a plain sequence (every node is scored) or as RankedNodes, kept in spread
order as usage changes: a decision then walks only as far as its candidates, which is what keeps it cheap
in a region of hundreds of nodes. Both give the same ranking.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
import random
from collections.abc import Collection, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

MAX_HOPS = 8
_RNG = random.Random()
#: How many ranked candidates a decision offers; a claim that loses a race moves on to the next.
CANDIDATES = 3


class Strategy(enum.StrEnum):
    SPREAD = "spread"
    BINPACK = "binpack"


@dataclass(frozen=True, slots=True)
class RegionInfo:
    id: str
    identifier: str
    server_limit: int
    live_count: int
    fallback_id: str | None = None
    country_id: str | None = None

    @property
    def full(self) -> bool:
        return self.live_count >= self.server_limit


@dataclass(frozen=True, slots=True)
class NodeInfo:
    id: str
    region_id: str | None
    ready: bool
    maintenance: bool
    tags: frozenset[str]
    memory_mib: int
    cpu_percent: int  # cores x 100
    disk_mib: int
    overallocation_pct: int = 0
    used_memory_mib: int = 0
    used_cpu_percent: int = 0
    used_disk_mib: int = 0
    #: Free allocations on the node, and which of the request's specific ports are among them.
    free_port_count: int = 0
    free_ports: frozenset[int] = frozenset()
    name: str = ""
    #: Dedicated to this organization; None: open to every organization.
    organization_id: int | None = None
    #: Host name or IP clients reach it at.
    address: str = ""

    def plus(self, memory_mib: int, cpu_percent: int, disk_mib: int, allocations: int) -> NodeInfo:
        """The node with one more instance of that size on it (what a committed claim did)."""
        return NodeInfo(
            self.id,
            self.region_id,
            self.ready,
            self.maintenance,
            self.tags,
            self.memory_mib,
            self.cpu_percent,
            self.disk_mib,
            self.overallocation_pct,
            self.used_memory_mib + memory_mib,
            self.used_cpu_percent + cpu_percent,
            self.used_disk_mib + disk_mib,
            self.free_port_count - allocations,
            self.free_ports,
            self.name,
            self.organization_id,
            self.address,
        )

    def _cap(self, total: int) -> float:
        return total * (1 + self.overallocation_pct / 100)

    def free_memory(self) -> float:
        return self._cap(self.memory_mib) - self.used_memory_mib

    def free_cpu(self) -> float:
        return self._cap(self.cpu_percent) - self.used_cpu_percent

    def free_disk(self) -> float:
        return self._cap(self.disk_mib) - self.used_disk_mib

    def memory_fraction_free(self) -> float:
        cap = self._cap(self.memory_mib)
        return self.free_memory() / cap if cap > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Request:
    memory_mib: int
    cpu_percent: int
    disk_mib: int = 0
    tags: frozenset[str] = frozenset()
    #: Specific host ports wanted on one node; empty means "any `port_count` free allocations".
    ports: tuple[int, ...] = ()
    port_count: int = 1
    #: The instance's organization: nodes dedicated to another one are not candidates.
    organization_id: int | None = None

    def may_use(self, node: NodeInfo) -> bool:
        return node.organization_id is None or node.organization_id == self.organization_id


_Key = tuple[float, float, str]


class RankedNodes(Collection[NodeInfo]):
    """A region's nodes in spread order (the largest free-memory fraction first, ties in random order),
    kept sorted as nodes are put back with new usage: O(log n) to find, O(n) memmove to move."""

    __slots__ = ("_keys", "_nodes", "_rng")

    def __init__(self, nodes: Iterable[NodeInfo] = (), rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._nodes: dict[str, tuple[_Key, NodeInfo]] = {n.id: (self._key(n), n) for n in nodes}
        self._keys: list[_Key] = sorted(key for key, _ in self._nodes.values())

    def _key(self, node: NodeInfo) -> _Key:
        return (-node.memory_fraction_free(), self._rng.random(), node.id)

    def put(self, node: NodeInfo) -> None:
        """Add the node, or move it to where its new usage ranks it."""
        self.discard(node.id)
        key = self._key(node)
        bisect.insort(self._keys, key)
        self._nodes[node.id] = (key, node)

    def discard(self, node_id: str) -> None:
        old = self._nodes.pop(node_id, None)
        if old is not None:
            del self._keys[bisect.bisect_left(self._keys, old[0])]

    def get(self, node_id: str) -> NodeInfo | None:
        found = self._nodes.get(node_id)
        return found[1] if found else None

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[NodeInfo]:
        nodes = self._nodes
        return (nodes[key[2]][1] for key in self._keys)

    def __reversed__(self) -> Iterator[NodeInfo]:
        nodes = self._nodes
        return (nodes[key[2]][1] for key in reversed(self._keys))

    def __contains__(self, item: object) -> bool:
        return isinstance(item, NodeInfo) and item.id in self._nodes


@dataclass(frozen=True, slots=True)
class Snapshot:
    regions: Mapping[str, RegionInfo]
    nodes_by_region: Mapping[str, Collection[NodeInfo]]
    #: Ids of the Ready nodes; None: each node's own ``ready`` flag says.
    ready: AbstractSet[str] | None = None

    def is_ready(self, node: NodeInfo) -> bool:
        return node.ready if self.ready is None else node.id in self.ready


@dataclass(frozen=True, slots=True)
class Candidate:
    node: NodeInfo
    region: RegionInfo
    fallback: bool


@dataclass(frozen=True, slots=True)
class Refusal:
    #: (region identifier, why) for every region tried, in chain order.
    reasons: tuple[tuple[str, str], ...]
    #: True when no region of the chain had a single Ready node: nothing is reachable (503, not 409).
    unreachable: bool

    @property
    def message(self) -> str:
        if not self.reasons:
            return "no region to place in"
        return "; ".join(f"{region}: {why}" for region, why in self.reasons)


@dataclass(frozen=True, slots=True)
class Decision:
    candidates: tuple[Candidate, ...]
    refusals: tuple[tuple[str, str], ...] = field(default=())  # regions skipped before the first candidate


def region_chain(start: str, regions: Mapping[str, RegionInfo]) -> list[RegionInfo]:
    """Follow fallbacks from ``start``; a repeat or MAX_HOPS ends the chain, so a cycle cannot loop."""
    chain: list[RegionInfo] = []
    seen: set[str] = set()
    current: str | None = start
    while current is not None and current not in seen and len(chain) <= MAX_HOPS:
        region = regions.get(current)
        if region is None:
            break
        chain.append(region)
        seen.add(current)
        current = region.fallback_id
    return chain


def _fits(node: NodeInfo, req: Request) -> str | None:
    """None when the node can take the request, else the first reason it cannot (for the refusal)."""
    if node.free_memory() < req.memory_mib:
        return "memory"
    if node.free_cpu() < req.cpu_percent:
        return "cpu"
    if node.free_disk() < req.disk_mib:
        return "disk"
    if req.ports:
        if not set(req.ports) <= node.free_ports:
            return "ports"
    elif node.free_port_count < req.port_count:
        return "ports"
    return None


def _usable(node: NodeInfo, req: Request, ready: bool) -> bool:
    return (
        ready
        and not node.maintenance
        and req.may_use(node)
        and req.tags <= node.tags
        and _fits(node, req) is None
    )


def _why_not(
    region: RegionInfo, nodes: Collection[NodeInfo], req: Request, snap: Snapshot
) -> tuple[str, bool]:
    """(reason, had a Ready node) for a region with no candidate."""
    if region.full:
        return f"at serverLimit {region.server_limit}", any(
            snap.is_ready(n) and not n.maintenance for n in nodes
        )
    ready = [n for n in nodes if snap.is_ready(n) and not n.maintenance]
    if not nodes:
        return "no nodes", False
    if not ready:
        return "no Ready node", False
    ready = [n for n in ready if req.may_use(n)]
    if not ready:
        return "no Ready node open to the organization (the Ready ones are dedicated to others)", True
    tagged = [n for n in ready if req.tags <= n.tags]
    if not tagged:
        return f"no Ready node tagged {', '.join(sorted(req.tags))}", True
    misses = {_fits(n, req) for n in tagged}
    parts = []
    if "memory" in misses:
        parts.append(f"{req.memory_mib} MiB")
    if "cpu" in misses:
        parts.append(f"{req.cpu_percent}% CPU")
    if "disk" in misses:
        parts.append(f"{req.disk_mib} MiB disk")
    if "ports" in misses:
        parts.append(f"port(s) {', '.join(map(str, req.ports))}" if req.ports else "a free allocation")
    return f"no Ready node with {' or '.join(parts)} free", True


def place(
    req: Request,
    start_region: str,
    snapshot: Snapshot,
    strategy: Strategy = Strategy.SPREAD,
    rng: random.Random | None = None,
    limit: int = CANDIDATES,
) -> Decision | Refusal:
    """The best ``limit`` candidates of the first region along the chain that has any (later regions are
    fallbacks, tried only when earlier ones cannot serve), or a refusal naming every region tried and why."""
    rng = rng or _RNG
    reasons: list[tuple[str, str]] = []
    any_ready = False
    for hop, region in enumerate(region_chain(start_region, snapshot.regions)):
        nodes = snapshot.nodes_by_region.get(region.id, ())
        best = [] if region.full else _best(nodes, req, snapshot, strategy, rng, limit)
        if not best:
            why, had_ready = _why_not(region, nodes, req, snapshot)
            any_ready = any_ready or had_ready
            reasons.append((region.identifier, why))
            continue
        return Decision(tuple(Candidate(n, region, hop > 0) for n in best), tuple(reasons))
    return Refusal(tuple(reasons), unreachable=not any_ready)


def best_nodes(
    nodes: Collection[NodeInfo],
    req: Request,
    ready: AbstractSet[str],
    strategy: Strategy = Strategy.SPREAD,
    rng: random.Random | None = None,
    limit: int = CANDIDATES,
) -> list[NodeInfo]:
    """The best ``limit`` nodes of a set outside any region's chain (nodes in no region)."""
    return _best(nodes, req, Snapshot({}, {}, ready), strategy, rng or _RNG, limit)


def _best(
    nodes: Collection[NodeInfo],
    req: Request,
    snapshot: Snapshot,
    strategy: Strategy,
    rng: random.Random,
    limit: int,
) -> list[NodeInfo]:
    if isinstance(nodes, RankedNodes):
        walk = iter(nodes) if strategy is Strategy.SPREAD else reversed(nodes)
        return list(itertools.islice((n for n in walk if _usable(n, req, snapshot.is_ready(n))), limit))
    viable = [n for n in nodes if _usable(n, req, snapshot.is_ready(n))]
    sign = -1.0 if strategy is Strategy.SPREAD else 1.0
    return heapq.nsmallest(limit, viable, key=lambda n: (sign * n.memory_fraction_free(), rng.random()))
