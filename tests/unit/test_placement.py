"""The pure placement function: examples from DESIGN.md and properties over arbitrary fleets."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.placement.scheduler import (
    MAX_HOPS,
    Decision,
    NodeInfo,
    RankedNodes,
    Refusal,
    RegionInfo,
    Request,
    Snapshot,
    Strategy,
    _fits,
    place,
    region_chain,
)


def region(rid: str, limit: int = 10, live: int = 0, fallback: str | None = None) -> RegionInfo:
    return RegionInfo(rid, rid, limit, live, fallback)


def node(nid: str, rid: str, memory: int = 4096, used: int = 0, **kw: object) -> NodeInfo:
    values: dict[str, object] = dict(
        id=nid,
        region_id=rid,
        ready=True,
        maintenance=False,
        tags=frozenset(),
        memory_mib=memory,
        cpu_percent=400,
        disk_mib=10_000,
        used_memory_mib=used,
        free_port_count=5,
    )
    values.update(kw)
    return NodeInfo(**values)  # type: ignore[arg-type]


REQ = Request(memory_mib=1024, cpu_percent=100)


def test_a_cycle_terminates_and_each_region_appears_once() -> None:
    regions = {"a": region("a", fallback="b"), "b": region("b", fallback="a"), "c": region("c", fallback="c")}
    assert [r.id for r in region_chain("a", regions)] == ["a", "b"]
    assert [r.id for r in region_chain("c", regions)] == ["c"]
    long = {f"r{i}": region(f"r{i}", fallback=f"r{i + 1}") for i in range(20)}
    assert len(region_chain("r0", long)) == MAX_HOPS + 1


def test_fallback_on_server_limit_and_on_capacity() -> None:
    snap = Snapshot(
        {"a": region("a", limit=2, live=2, fallback="b"), "b": region("b", fallback="c"), "c": region("c")},
        {"a": [node("n1", "a")], "b": [node("n2", "b", memory=512)], "c": [node("n3", "c")]},
    )
    decision = place(REQ, "a", snap)
    assert isinstance(decision, Decision)
    assert [(c.node.id, c.fallback) for c in decision.candidates] == [("n3", True)]
    assert decision.refusals == (("a", "at serverLimit 2"), ("b", "no Ready node with 1024 MiB free"))


def test_a_full_cycle_is_refused_naming_every_region() -> None:
    snap = Snapshot(
        {"a": region("a", limit=1, live=1, fallback="b"), "b": region("b", fallback="a")},
        {"a": [node("n1", "a")], "b": [node("n2", "b", ready=False)]},
    )
    refusal = place(REQ, "a", snap)
    assert isinstance(refusal, Refusal)
    assert refusal.message == "a: at serverLimit 1; b: no Ready node"
    assert not refusal.unreachable  # a had a Ready node, it was only full
    nobody = place(REQ, "b", Snapshot(snap.regions, {"b": [node("n2", "b", ready=False)]}))
    assert isinstance(nobody, Refusal) and nobody.unreachable


def test_tags_maintenance_ports_and_strategy() -> None:
    nodes = [
        node("busy", "a", used=3000, tags=frozenset({"ssd"})),
        node("idle", "a", used=0, tags=frozenset({"ssd"})),
        node("hdd", "a", used=0),
        node("off", "a", maintenance=True, tags=frozenset({"ssd"})),
    ]
    snap = Snapshot({"a": region("a")}, {"a": nodes})
    tagged = Request(memory_mib=512, cpu_percent=50, tags=frozenset({"ssd"}))
    spread = place(tagged, "a", snap, Strategy.SPREAD)
    binpack = place(tagged, "a", snap, Strategy.BINPACK)
    assert isinstance(spread, Decision) and isinstance(binpack, Decision)
    assert [c.node.id for c in spread.candidates] == ["idle", "busy"]
    assert [c.node.id for c in binpack.candidates] == ["busy", "idle"]
    ports = Request(memory_mib=512, cpu_percent=50, ports=(30001,))
    with_port = Snapshot(
        {"a": region("a")}, {"a": [node("p", "a", free_ports=frozenset({30001})), node("q", "a")]}
    )
    decided = place(ports, "a", with_port)
    assert isinstance(decided, Decision) and [c.node.id for c in decided.candidates] == ["p"]
    refused = place(Request(64, 10, tags=frozenset({"gpu"})), "a", snap)
    assert isinstance(refused, Refusal) and refused.message == "a: no Ready node tagged gpu"


def test_a_dedicated_node_takes_only_its_organizations_instances() -> None:
    snap = Snapshot(
        {"a": region("a", fallback="b"), "b": region("b")},
        {"a": [node("mine", "a", organization_id=7)], "b": [node("shared", "b", used=3000)]},
    )
    ours = place(Request(512, 50, organization_id=7), "a", snap)
    assert isinstance(ours, Decision) and [c.node.id for c in ours.candidates] == ["mine"]
    theirs = place(Request(512, 50, organization_id=8), "a", snap)
    assert isinstance(theirs, Decision) and [(c.node.id, c.fallback) for c in theirs.candidates] == [
        ("shared", True)
    ]
    assert theirs.refusals == (
        ("a", "no Ready node open to the organization (the Ready ones are dedicated to others)"),
    )


def test_overallocation_lets_a_node_take_more_than_it_has() -> None:
    snap = Snapshot({"a": region("a")}, {"a": [node("n", "a", memory=1000, used=900, overallocation_pct=50)]})
    assert isinstance(place(Request(memory_mib=500, cpu_percent=0), "a", snap), Decision)
    assert isinstance(place(Request(memory_mib=700, cpu_percent=0), "a", snap), Refusal)


# ---------------------------------------------------------------- properties

REGIONS = ["r0", "r1", "r2", "r3"]


@st.composite
def fleets(draw: st.DrawFn) -> tuple[Snapshot, Request, str]:
    regions = {
        rid: RegionInfo(
            rid,
            rid,
            draw(st.integers(1, 5)),
            draw(st.integers(0, 6)),
            draw(st.one_of(st.none(), st.sampled_from(REGIONS))),
        )
        for rid in REGIONS
    }
    nodes: dict[str, list[NodeInfo]] = {}
    for n in range(draw(st.integers(0, 12))):
        rid = draw(st.sampled_from(REGIONS))
        memory = draw(st.integers(256, 8192))
        nodes.setdefault(rid, []).append(
            NodeInfo(
                id=f"n{n}",
                region_id=rid,
                ready=draw(st.booleans()),
                maintenance=draw(st.booleans()),
                tags=frozenset(draw(st.sets(st.sampled_from(["ssd", "gpu", "eu"]), max_size=2))),
                memory_mib=memory,
                cpu_percent=draw(st.sampled_from([100, 200, 400])),
                disk_mib=10_000,
                overallocation_pct=draw(st.sampled_from([0, 0, 50])),
                used_memory_mib=draw(st.integers(0, memory)),
                used_cpu_percent=draw(st.integers(0, 300)),
                free_port_count=draw(st.integers(0, 3)),
                free_ports=frozenset(draw(st.sets(st.sampled_from([30000, 30001]), max_size=2))),
                organization_id=draw(st.sampled_from([None, None, 1, 2])),
            )
        )
    req = Request(
        memory_mib=draw(st.integers(64, 4096)),
        cpu_percent=draw(st.integers(0, 200)),
        tags=frozenset(draw(st.sets(st.sampled_from(["ssd", "gpu", "eu"]), max_size=1))),
        ports=draw(st.sampled_from([(), (30000,), (30000, 30001)])),
        organization_id=draw(st.sampled_from([1, 2, 3])),
    )
    return Snapshot(regions, nodes), req, draw(st.sampled_from(REGIONS))


def viable(snap: Snapshot, req: Request, start: str) -> set[str]:
    """Brute force: every node that may take the request somewhere along the chain."""
    ok = set()
    for r in region_chain(start, snap.regions):
        if r.live_count >= r.server_limit:
            continue
        for n in snap.nodes_by_region.get(r.id, []):
            dedicated_elsewhere = n.organization_id not in (None, req.organization_id)
            if (
                n.ready
                and not n.maintenance
                and not dedicated_elsewhere
                and req.tags <= n.tags
                and _fits(n, req) is None
            ):
                ok.add(n.id)
    return ok


@settings(max_examples=400)
@given(fleets(), st.randoms(use_true_random=False))
def test_placement_properties(fleet: tuple[Snapshot, Request, str], rng: random.Random) -> None:
    snap, req, start = fleet
    result = place(req, start, snap, rng=rng, limit=3)
    expected = viable(snap, req, start)
    chain = region_chain(start, snap.regions)
    if isinstance(result, Refusal):
        assert not expected, "a placement existed but was refused"
        assert [r for r, _ in result.reasons] == [r.identifier for r in chain], "every region tried is named"
        return
    assert expected, "never a placement where none fits"
    chosen = result.candidates
    region = chosen[0].region
    assert {c.region.id for c in chosen} == {region.id}, "one region per decision"
    first_viable = next(r for r in chain if {n.id for n in snap.nodes_by_region.get(r.id, [])} & expected)
    assert region.id == first_viable.id, "the first region of the chain that can serve, serves"
    assert [r for r, _ in result.refusals] == [r.identifier for r in chain[: chain.index(first_viable)]]
    in_region = {n.id for n in snap.nodes_by_region.get(region.id, [])} & expected
    assert {c.node.id for c in chosen} <= in_region and len(chosen) == min(3, len(in_region))
    for c in chosen:
        assert c.region.live_count < c.region.server_limit, "never a region at its limit"
        assert c.node.free_memory() >= req.memory_mib and c.node.free_cpu() >= req.cpu_percent, (
            "never without room"
        )
        assert c.node.ready and not c.node.maintenance and req.tags <= c.node.tags
        assert c.node.organization_id in (None, req.organization_id), "never another organization's node"
        assert c.fallback == (c.region.id != start)
    fractions = [c.node.memory_fraction_free() for c in chosen]
    assert fractions == sorted(fractions, reverse=True), "spread: the emptiest node first"


@settings(max_examples=300)
@given(fleets(), st.sampled_from(list(Strategy)), st.randoms(use_true_random=False))
def test_the_ranked_view_decides_as_scoring_every_node_does(
    fleet: tuple[Snapshot, Request, str], strategy: Strategy, rng: random.Random
) -> None:
    """The coordinator decides over RankedNodes (walking only as far as it needs); that must give the same
    answer as scoring every node: same region, same refusals, candidates of the same rank."""
    snap, req, start = fleet
    ranked = Snapshot(
        snap.regions, {rid: RankedNodes(nodes, rng) for rid, nodes in snap.nodes_by_region.items()}
    )
    plain = place(req, start, snap, strategy, rng=rng, limit=3)
    fast = place(req, start, ranked, strategy, rng=rng, limit=3)
    if isinstance(plain, Refusal):
        assert fast == plain
        return
    assert isinstance(fast, Decision)
    assert fast.refusals == plain.refusals
    assert [c.region.id for c in fast.candidates] == [c.region.id for c in plain.candidates]
    assert [c.node.memory_fraction_free() for c in fast.candidates] == [
        c.node.memory_fraction_free() for c in plain.candidates
    ]


@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 4096), st.booleans()), max_size=60))
def test_ranked_nodes_stay_in_spread_order_as_usage_changes(moves: list[tuple[int, int, bool]]) -> None:
    ranked = RankedNodes(rng=random.Random(1))
    present: dict[str, NodeInfo] = {}
    for n, used, remove in moves:
        nid = f"n{n}"
        if remove:
            ranked.discard(nid)
            present.pop(nid, None)
        else:
            present[nid] = node(nid, "a", used=used)
            ranked.put(present[nid])
        listed = list(ranked)
        assert {x.id for x in listed} == set(present) and len(ranked) == len(present)
        assert all(ranked.get(x.id) == present[x.id] for x in listed), "the newest usage of each node"
        fractions = [x.memory_fraction_free() for x in listed]
        assert fractions == sorted(fractions, reverse=True)
        assert list(reversed(ranked)) == listed[::-1]
