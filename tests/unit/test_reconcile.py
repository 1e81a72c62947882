"""The agent's reconcile plan, as examples and as properties over arbitrary desired/actual sets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.reconcile import RUNNING, Act, Desired, plan
from agent.runtime.base import ContainerInfo, ContainerSpec, ContainerStatus
from tests.unit.factories import container_info, container_spec


def spec(iid: str) -> ContainerSpec:
    return container_spec(iid, image="img")


def info(iid: str, status: ContainerStatus) -> ContainerInfo:
    return container_info(iid, status, labels={})


def test_examples() -> None:
    desired = {"a": Desired(spec("a"), True), "b": Desired(spec("b"), True), "c": Desired(spec("c"), False)}
    actual = {
        "b": info("b", ContainerStatus.EXITED),
        "c": info("c", ContainerStatus.RUNNING),
        "d": info("d", ContainerStatus.RUNNING),
        "e": info("e", ContainerStatus.RUNNING),
    }
    acts = {
        a.instance_id: a.act for a in plan(desired, {"e", "f"}, actual, {"d": 0.0}, now=10.0, grace_s=5.0)
    }
    assert acts == {
        "a": Act.DEPLOY,
        "b": Act.START,
        "c": Act.STOP,
        "d": Act.REMOVE_UNKNOWN,
        "e": Act.REMOVE,
        "f": Act.REPORT_REMOVED,
    }


def test_unknown_containers_wait_out_their_grace() -> None:
    actual = {"d": info("d", ContainerStatus.RUNNING)}
    assert plan({}, set(), actual, {"d": 8.0}, now=10.0, grace_s=5.0) == []
    assert plan({}, set(), actual, {}, now=10.0, grace_s=5.0) == []  # first seen now


def test_running_as_wanted_is_adopted_not_touched() -> None:
    acts = plan(
        {"a": Desired(spec("a"), True)}, set(), {"a": info("a", ContainerStatus.RUNNING)}, {}, 0.0, 0.0
    )
    assert [(a.act, a.container_id) for a in acts] == [(Act.ADOPT, "c-a")]


ids = st.sampled_from([f"i{n}" for n in range(8)])
statuses = st.sampled_from(list(ContainerStatus))


@given(
    desired=st.dictionaries(ids, st.booleans()),
    remove=st.sets(ids),
    actual=st.dictionaries(ids, statuses),
    grace=st.floats(0, 10),
)
def test_properties(
    desired: dict[str, bool], remove: set[str], actual: dict[str, ContainerStatus], grace: float
) -> None:
    want = {i: Desired(spec(i), r) for i, r in desired.items()}
    have = {i: info(i, s) for i, s in actual.items()}
    actions = plan(want, remove, have, {i: 0.0 for i in have}, now=5.0, grace_s=grace)
    by_id = {a.instance_id: a for a in actions}
    assert len(by_id) == len(actions), "at most one action per instance"
    for iid in remove:
        assert by_id[iid].act is (Act.REMOVE if iid in have else Act.REPORT_REMOVED)
    for iid in set(want) - remove:
        act = by_id[iid].act
        if iid not in have:
            assert act is Act.DEPLOY
        else:
            # Exactly the one action that closes the gap: start what should run and does not, stop what
            # runs and should not, adopt what is as wanted.
            runs = actual[iid] in RUNNING
            expected = (
                Act.ADOPT if runs == want[iid].running else (Act.START if want[iid].running else Act.STOP)
            )
            assert act is expected, (iid, actual[iid], want[iid].running, act)
            assert by_id[iid].container_id == f"c-{iid}"
    for iid in set(have) - set(want) - remove:
        assert (iid in by_id) == (grace <= 5.0)
    # Nothing is ever done to an instance that is neither wanted, released nor present.
    assert set(by_id) <= set(want) | remove | set(have)
