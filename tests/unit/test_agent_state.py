"""The agent's state machine (agent/state.py) as a pure function: examples, and properties over any
sequence of events — what the coordinator said, what the engine did, what the executor reports back."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.reconcile import Desired
from agent.restarts import RestartPolicy
from agent.runtime.base import ContainerInfo, ContainerSpec, ContainerStatus
from agent.state import (
    Accepted,
    Adopted,
    AgentState,
    Apply,
    CancelRetry,
    Commanded,
    Event,
    Exited,
    Failed,
    Finished,
    Listed,
    Made,
    OomKilled,
    Order,
    Remove,
    Removed,
    RemoveUnknown,
    Report,
    ReportKind,
    RetryDone,
    RetryDue,
    ScheduleRetry,
    Started,
    Stop,
    StopIssued,
    Stopped,
    Welcomed,
)
from tests.unit.factories import container_info, container_spec

IDS = ["a", "b", "c", "d"]
POLICY = RestartPolicy(initial_delay_s=1, max_delay_s=8, reset_after_s=30, crash_loop_after=3)


def spec(iid: str) -> ContainerSpec:
    return container_spec(iid, image="img")


def want(iid: str, running: bool = True) -> Desired:
    return Desired(spec(iid), running)


def container(iid: str, status: ContainerStatus = ContainerStatus.RUNNING) -> ContainerInfo:
    return container_info(iid, status, pid=0)


def state() -> AgentState:
    return AgentState(POLICY, unknown_grace_s=10)


# ------------------------------------------------------------------ examples


def test_a_welcome_deploys_what_is_missing_readopts_what_runs_and_removes_what_was_released() -> None:
    s = state()
    assert s.handle(Welcomed({"a": want("a"), "b": want("b")}, {"c"}, now=0)) == []
    assert set(s.desired) == {"a", "b"}  # at once, before the engine answers
    actual = {"b": container("b"), "c": container("c")}
    assert s.handle(Listed(actual, 0, {"c"}, readopt=True)) == [Apply("a"), Apply("b"), Remove("c")]


def test_a_command_right_behind_a_welcome_wins_over_it() -> None:
    s = state()
    s.handle(Welcomed({"a": want("a")}, set(), now=0))
    s.handle(Commanded(Order.REMOVE, "a", None, now=0))  # while the engine is being listed
    assert s.handle(Listed({"a": container("a")}, 0, readopt=True)) == []  # left to its grace
    s.handle(Commanded(Order.DEPLOY, "b", want("b"), now=0))
    s.handle(Welcomed({}, set(), now=1))
    assert s.desired == {}


def test_a_crash_of_a_wanted_instance_is_reported_and_retried_after_the_back_off() -> None:
    s = state()
    s.handle(Welcomed({"a": want("a")}, set(), now=0))
    s.handle(Started("a", "c-a", now=0))
    first = s.handle(Exited("a", 3, "c-a", now=1))
    assert first == [
        ScheduleRetry("a", 1.0),
        Report(ReportKind.EXITED, "a", "c-a", 3, "the container exited with code 3; restarting in 1 s"),
    ]
    assert s.handle(RetryDue("a", now=2)) == [Apply("a", after_crash=True)]
    # At work, the retry still owns the instance: a resync leaves it alone.
    assert s.handle(Listed({"a": container("a", ContainerStatus.EXITED)}, now=2)) == []
    assert s.handle(Started("a", "c-a", now=2, after_crash=True)) == [
        Report(ReportKind.STARTED, "a", "c-a", message="restarted after crash 1 in a row")
    ]
    s.handle(RetryDone("a"))
    assert s.restarts("a") == 1 and not s.instances["a"].retry_pending


def test_the_third_crash_in_a_row_is_flagged_a_crash_loop() -> None:
    s = state()
    s.handle(Welcomed({"a": want("a")}, set(), now=0))
    loops, messages = [], []
    for n in range(1, 5):
        s.handle(Started("a", "c-a", now=n * 10))
        *_, report = s.handle(Exited("a", 1, "c-a", now=n * 10 + 1))
        assert isinstance(report, Report)
        loops.append(report.crash_loop)
        messages.append(report.message)
        s.handle(RetryDue("a", now=n * 10 + 2))
        s.handle(RetryDone("a"))
    assert loops == [False, False, True, True]
    assert messages[-1].startswith("crash loop: the container exited with code 1, 4 times in a row")


def test_an_exit_we_caused_is_not_a_crash_and_an_oom_is_one_crash() -> None:
    s = state()
    s.handle(Welcomed({"a": want("a")}, set(), now=0))
    s.handle(StopIssued("a"))
    assert s.handle(Exited("a", 0, "c-a", now=1)) == []
    assert s.handle(OomKilled("a")) == []
    (retry, report) = s.handle(Exited("a", 137, "c-a", now=2))
    assert isinstance(retry, ScheduleRetry) and isinstance(report, Report)
    assert report.kind is ReportKind.OOM_KILLED and report.message.startswith("the container was OOM-killed")


def test_a_restart_and_a_kill_stop_first() -> None:
    s = state()
    assert s.handle(Commanded(Order.RESTART, "a", want("a"), now=0)) == [Apply("a", Stop.GRACEFUL)]
    assert s.handle(Commanded(Order.KILL, "a", want("a"), now=0)) == [Apply("a", Stop.KILL)]


def test_a_container_made_for_an_instance_dropped_meanwhile_is_removed() -> None:
    s = state()
    s.handle(Commanded(Order.DEPLOY, "a", want("a"), now=0))
    assert s.handle(Finished("a")) == []
    s.handle(Welcomed({}, set(), now=1))
    assert s.handle(Finished("a")) == [Remove("a")]


def test_a_late_exit_of_a_removed_container_is_no_crash() -> None:
    s = state()
    s.handle(Commanded(Order.DEPLOY, "a", want("a"), now=0))
    s.handle(Commanded(Order.REMOVE, "a", None, now=1))
    s.handle(StopIssued("a"))
    s.handle(Removed("a", "c-a"))
    assert s.handle(Exited("a", 143, "c-a", now=2)) == []
    assert "a" not in s.instances


def test_a_failed_deploy_is_retried_only_while_wanted() -> None:
    s = state()
    s.handle(Commanded(Order.DEPLOY, "a", want("a"), now=0))
    assert s.handle(Failed("a", "port busy", now=0))[1:] == [ScheduleRetry("a", 1.0)]
    assert s.handle(Commanded(Order.REMOVE, "a", None, now=1)) == [CancelRetry("a"), Remove("a")]
    assert s.handle(RetryDue("a", now=2)) == []
    off = AgentState(RestartPolicy(enabled=False))
    off.handle(Commanded(Order.DEPLOY, "a", want("a"), now=0))
    assert off.handle(Failed("a", "port busy", now=0)) == [
        Report(ReportKind.FAILED, "a", message="port busy")
    ]


def test_unknown_containers_are_removed_after_their_grace_and_never_before_a_welcome() -> None:
    s = state()
    assert s.handle(Listed({"x": container("x")}, now=0)) == []
    s.handle(Welcomed({}, set(), now=0))
    s.handle(Listed({"x": container("x")}, 0, readopt=True))
    assert s.removal_time("x") == 10
    assert s.handle(Listed({"x": container("x")}, now=5)) == []
    assert s.handle(Listed({"x": container("x")}, now=10)) == [RemoveUnknown("x", "c-x")]
    s.handle(Removed("x", "c-x"))
    assert "x" not in s.instances  # nothing of it is kept


def test_a_resync_does_not_re_report_what_is_as_wanted() -> None:
    s = state()
    s.handle(Welcomed({"a": want("a"), "b": want("b", running=False)}, set(), now=0))
    actual = {"a": container("a"), "b": container("b", ContainerStatus.EXITED)}
    assert s.handle(Listed(actual, now=1)) == []
    stopped = {"a": container("a", ContainerStatus.EXITED), "b": container("b")}
    assert s.handle(Listed(stopped, now=2)) == [Apply("a"), Apply("b")]


# ------------------------------------------------------------------ properties

ids = st.sampled_from(IDS)
times = st.floats(min_value=0, max_value=1000, allow_nan=False)
statuses = st.sampled_from([ContainerStatus.RUNNING, ContainerStatus.EXITED, ContainerStatus.CREATED])
actuals = st.dictionaries(ids, statuses, max_size=4).map(lambda d: {i: container(i, s) for i, s in d.items()})
wants = st.builds(want, ids, st.booleans())
orders = st.sampled_from(list(Order))


@st.composite
def commanded(draw: st.DrawFn) -> Commanded:
    order, iid = draw(orders), draw(ids)
    running = order not in (Order.STOP, Order.SUSPEND) and draw(st.booleans())
    return Commanded(order, iid, None if order is Order.REMOVE else want(iid, running), draw(times))


@st.composite
def welcomed(draw: st.DrawFn) -> Welcomed:
    desired = draw(st.dictionaries(ids, st.booleans(), max_size=3))
    remove = draw(st.sets(ids.filter(lambda i: i not in desired), max_size=2))
    return Welcomed({i: want(i, r) for i, r in desired.items()}, remove, draw(times))


events: st.SearchStrategy[Event] = st.one_of(
    welcomed(),
    commanded(),
    st.builds(Listed, actuals, times, st.sets(ids, max_size=2), st.booleans()),
    st.builds(RetryDone, ids),
    st.builds(Exited, ids, st.integers(0, 255), st.just("c"), times),
    st.builds(OomKilled, ids),
    st.builds(RetryDue, ids, times),
    st.builds(Accepted, ids),
    st.builds(Made, ids, st.just("c")),
    st.builds(Started, ids, st.just("c"), times, st.booleans()),
    st.builds(Adopted, ids, st.just("c"), st.booleans(), times, times),
    st.builds(Failed, ids, st.just("why"), times),
    st.builds(StopIssued, ids),
    st.builds(Stopped, ids, st.just("c")),
    st.builds(Finished, ids),
    st.builds(Removed, ids, st.just("c")),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(events, max_size=40))
def test_the_desired_set_is_exactly_what_the_coordinator_said(sequence: list[Event]) -> None:
    s, said = state(), dict[str, Desired]()
    for event in sequence:
        s.handle(event)
        if isinstance(event, Welcomed):
            said = dict(event.desired)
        elif isinstance(event, Commanded):
            if event.want is None:
                said.pop(event.instance_id, None)
            else:
                said[event.instance_id] = event.want
        assert s.desired == said


@settings(max_examples=400, deadline=None)
@given(st.lists(events, max_size=40))
def test_nothing_starts_a_released_stopped_or_suspended_instance(sequence: list[Event]) -> None:
    """After a removal (or a Welcome without it) nothing of an instance is made or started again; after a
    stop or suspension nothing restarts it; only a newer desired state that runs it can."""
    s = state()
    for event in sequence:
        for action in s.handle(event):
            current = s.want(action.instance_id)
            if isinstance(action, Apply):
                # The executor makes the container match this (read again under the lock): it starts
                # the instance only when it is wanted running.
                assert current is not None, f"{action} for an instance nobody wants"
            if isinstance(action, ScheduleRetry) and isinstance(event, Exited):
                assert current is not None and current.running, f"a crash retry for {current}"


@settings(max_examples=400, deadline=None)
@given(st.lists(events, max_size=40))
def test_a_cancelled_retry_does_nothing_when_it_fires_and_records_do_not_pile_up(
    sequence: list[Event],
) -> None:
    s = state()
    pending: set[str] = set()
    for event in sequence:
        actions = s.handle(event)
        for action in actions:
            if isinstance(action, ScheduleRetry):
                pending.add(action.instance_id)
            elif isinstance(action, CancelRetry):
                assert action.instance_id in pending
                pending.discard(action.instance_id)
        if isinstance(event, RetryDue):
            if event.instance_id not in pending:
                assert actions == []
            pending.discard(event.instance_id)
        assert {i for i, t in s.instances.items() if t.retry_waiting} == pending
        # Nothing idle is kept: a record exists only while something is wanted, pending or expected.
        assert not [i for i, t in s.instances.items() if t.idle]
