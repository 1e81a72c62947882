"""The coordinator's one reader of new events, on SQLite and PostgreSQL: every follower gets what it may see
in id order, nothing twice, a resumed one what it missed; many followers cost one reader's queries; a gap
in the ids is waited for, then passed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

from coordinator.config import CoordinatorConfig
from coordinator.domain.records import FleetEvent, Principal
from coordinator.service import events as events_service
from coordinator.service.core import Core
from coordinator.service.events import EventService
from coordinator.store import events as events_store
from coordinator.store.engine import Store
from tests.unit.factories import event_with_id

ADMIN = Principal("a", "admin", 1, True)
ONE = Principal("u1", "one", 1, False)
TWO = Principal("u2", "two", 2, False)


@dataclass
class Parts:
    """What EventService reads of the core."""

    store: Store
    config: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    clock: Any = time.time


def service(store: Store) -> EventService:
    return EventService(cast(Core, Parts(store)))


async def write(store: Store, org: int | None, what: str, kind: str = "instance.state") -> None:
    async with store.write() as conn:
        await events_store.record(conn, kind, at=time.time(), data={"what": what}, organization_id=org)


class Follower:
    def __init__(self, svc: EventService, caller: Principal, after: int) -> None:
        self.seen: list[FleetEvent] = []
        self._stream: AsyncIterator[list[FleetEvent]] = svc.follow(caller, after)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for batch in self._stream:
            self.seen += batch

    def said(self) -> list[str]:
        return [e.data["what"] for e in self.seen]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def until(check: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.01)


async def test_followers_get_what_they_may_see_in_order_and_a_resumed_one_its_missed(
    store: Store,
) -> None:
    svc = service(store)
    start = await svc.newest_id()
    await write(store, 1, "before")  # written before anyone follows: only a resumed follower gets it
    now = await svc.newest_id()
    admin, one, two = (Follower(svc, p, now) for p in (ADMIN, ONE, TWO))
    resumed = Follower(svc, ONE, start)
    await until(lambda: resumed.said() == ["before"])
    for org, what in ((1, "mine"), (2, "theirs"), (None, "shared node")):
        await write(store, org, what, "node.status" if org is None else "instance.state")
    await until(lambda: len(admin.seen) == 3 and len(resumed.seen) == 3 and len(two.seen) == 2)
    await asyncio.sleep(0.3)  # and nothing more, nothing twice
    assert admin.said() == ["mine", "theirs", "shared node"]
    assert one.said() == ["mine", "shared node"]
    assert two.said() == ["theirs", "shared node"]
    assert resumed.said() == ["before", "mine", "shared node"]
    assert [e.id for e in admin.seen] == sorted({e.id for e in admin.seen})
    for f in (admin, one, two, resumed):
        await f.stop()
    await until(lambda: svc.feed.safe is None)  # nobody follows: the reader stops
    svc.close()


async def test_fifty_followers_cost_one_readers_queries(store: Store) -> None:
    svc = service(store)
    reads = 0
    real_read = store.read

    def counted() -> Any:
        nonlocal reads
        reads += 1
        return real_read()

    store.read = counted  # type: ignore[method-assign]
    try:
        newest = await svc.newest_id()
        followers = [Follower(svc, ONE, newest) for _ in range(50)]
        await asyncio.sleep(0.1)
        reads = 0
        for n in range(5):
            await write(store, 1, f"e{n}")
            await asyncio.sleep(0.05)
        await until(lambda: all(len(f.seen) == 5 for f in followers))
        polls = 1 + 1.0 / events_service.POLL_S
        assert reads <= 3 * polls, reads  # about one poll's queries per poll, not one set per follower
        for f in followers:
            await f.stop()
    finally:
        store.read = real_read  # type: ignore[method-assign]
        svc.close()


async def test_a_gap_is_waited_for_then_passed(store: Store) -> None:
    svc = service(store)
    base = await svc.newest_id() + 100  # ids of our own, clear of any the sequence hands out

    async def with_id(event_id: int, what: str) -> None:
        await event_with_id(store, event_id, what)

    await with_id(base, "start")
    follower = Follower(svc, ONE, base - 1)
    await until(lambda: follower.said() == ["start"])
    await with_id(base + 2, "later id, committed first")
    await asyncio.sleep(0.2)
    assert follower.said() == ["start"]  # not past the gap yet: base + 1 may still commit
    await with_id(base + 1, "lower id, committed late")
    await until(lambda: len(follower.seen) == 3)
    assert follower.said() == ["start", "lower id, committed late", "later id, committed first"]
    began = time.monotonic()
    await with_id(base + 4, "past a gap that never fills")  # base + 3 was rolled back, say
    await until(lambda: len(follower.seen) == 4)
    assert time.monotonic() - began >= events_service.GAP_WAIT_S * 0.9
    # Passed, not forgotten: what webhooks deliver up to stays below it while it may still come...
    assert svc.feed.safe == base + 4 and svc.feed.settled == base + 2
    await with_id(base + 3, "committed after its gap was passed")  # a slow transaction, say
    # ...and when it comes, the followers get it, late.
    await until(lambda: len(follower.seen) == 5)
    assert follower.said()[-1] == "committed after its gap was passed" and svc.feed.settled == base + 4
    await follower.stop()
    svc.close()
