"""Fleet events: every instance state change and node status change is written with the change itself
(store/events.py); this reads them with the caller's visibility and prunes them past the retention.

One reader per coordinator (:class:`EventFeed`) polls the table while anyone listens and hands each new event
to every follower: fifty streams cost one query per poll, not a hundred, and since the table is shared a
change made through any coordinator reaches the followers of every one."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from common.logging import get
from coordinator.domain.records import FleetEvent, Principal
from coordinator.domain.times import iso
from coordinator.service.core import Core
from coordinator.store import events as events_store

log = get("coordinator.events")

#: How often the feed looks for new events while anyone follows, for those other coordinators write (this
#: one's own commits wake it at once). A poll with nothing new is one indexed query.
POLL_S = 0.05
#: At least this long between two looks: a burst of commits is read in one go.
COALESCE_S = 0.005
#: On PostgreSQL ids are drawn before commit, so a lower id can commit after a higher one, and a rolled
#: back transaction leaves a gap for good. The feed goes past a gap only once it has waited this long
#: for it to fill: it hands out in id order, and a client resuming with Last-Event-ID misses nothing and
#: gets nothing twice.
GAP_WAIT_S = 0.5
#: The ids a gap was passed over are looked for this long after: one that commits late (a slow transaction)
#: still reaches the followers (out of order, without an SSE id: a resumed client gets nothing twice), and
#: webhooks, which must deliver in order, wait for it (``settled``). A rolled back transaction's id never
#: comes: webhooks wait this long for nothing, so it is a little longer than any write transaction takes.
MISSING_KEEP_S = 10.0
#: At most this many missing ids are remembered (a gap wider than that is a rollback storm, not news).
MISSING_MAX = 1000
#: How far back a starting feed looks for ids still missing (a transaction in flight as it starts).
LOOKBACK = 200
#: A follower with nothing to say for this long says so (the stream's keepalive).
IDLE_S = 15.0
#: Batches a follower may fall behind by before it is cut loose and catches up from the table instead.
QUEUE_BATCHES = 256
#: Events read per query (a follower catching up pages through the table).
PAGE = 1000


def document(e: FleetEvent) -> dict[str, Any]:
    """An event as the stream, the JSON page and webhooks tell it."""
    return {
        "id": e.id,
        "at": iso(e.at),
        "kind": e.kind,
        "instanceId": e.instance_id,
        "nodeId": e.node_id,
        "organizationId": e.organization_id,
        "data": e.data,
    }


class Subscription:
    """One follower's place on the feed: the batches handed out since ``start`` (every event up to it is
    in the table), unless it fell too far behind (``overflowed``: catch up from the table past its last)."""

    def __init__(self, start: int) -> None:
        self.start = start
        #: (late, events): late ones committed after the feed had gone past their ids.
        self.queue: asyncio.Queue[tuple[bool, list[FleetEvent]]] = asyncio.Queue(QUEUE_BATCHES)
        self.overflowed = False

    def offer(self, batch: list[FleetEvent], late: bool = False) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait((late, batch))
        except asyncio.QueueFull:
            self.overflowed = True


class EventFeed:
    """The coordinator's one reader of new events, running while anyone is subscribed."""

    def __init__(self, core: Core, stopping: asyncio.Event) -> None:
        self.core = core
        self._stopping = stopping
        self._subscribers: set[Subscription] = set()
        #: Every event up to this id has been handed out (None: not running).
        self.safe: int | None = None
        self._task: asyncio.Task[None] | None = None
        #: Ids passed over as gaps, with when: looked for until MISSING_KEEP_S after.
        self.missing: dict[int, float] = {}
        #: Set by each commit of this process: there may be new events to read.
        self._committed = asyncio.Event()
        core.store.on_commit(self._committed.set)

    @property
    def settled(self) -> int | None:
        """Every event up to this id is handed out and none can still come: below the lowest id still
        missing (what webhooks deliver up to, in order)."""
        if self.safe is None:
            return None
        return min(self.safe, min(self.missing) - 1) if self.missing else self.safe

    async def subscribe(self) -> Subscription:
        if self.safe is None:
            async with self.core.store.read() as conn:
                newest = await events_store.newest_id(conn)
                recent = set(await events_store.ids_after(conn, max(newest - LOOKBACK, 0), LOOKBACK))
            if self.safe is None:  # another subscriber may have started it meanwhile
                self.safe = newest
                now = time.monotonic()
                floor = max(newest - LOOKBACK, 0)
                # Holes among the recent ids only: below the lowest one are the pruned and the ancient.
                lowest = min(recent, default=newest)
                self.missing = {i: now for i in range(max(lowest, floor) + 1, newest) if i not in recent}
        sub = Subscription(self.safe)
        self._subscribers.add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="event-feed")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    async def _run(self) -> None:
        gap_since: float | None = None
        while self._subscribers and not self._stopping.is_set():
            try:
                gap_since = await self._poll(gap_since)
            except Exception:
                log.exception("reading new events failed; trying again")
            await asyncio.sleep(COALESCE_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._committed.wait(), POLL_S - COALESCE_S)
        self.safe = None  # nobody listens: the next subscriber starts from the newest
        self._task = None

    async def _poll(self, gap_since: float | None) -> float | None:
        assert self.safe is not None
        self._committed.clear()  # a commit from here on makes another look
        safe = self.safe
        async with self.core.store.read() as conn:
            # One read: every event past the last handed out, whoever may see it.
            fresh = await events_store.after(conn, safe, organization_id=None, admin=True, limit=PAGE)
            # Go as far as the ids are contiguous; past a gap only once it is old enough.
            for event_id in (e.id for e in fresh):
                if event_id == safe + 1:
                    safe, gap_since = event_id, None
                    continue
                now = time.monotonic()
                gap_since = gap_since if gap_since is not None else now
                if now - gap_since < GAP_WAIT_S:
                    break
                for skipped in range(safe + 1, min(event_id, safe + 1 + MISSING_MAX)):
                    self.missing[skipped] = now
                safe, gap_since = event_id, None
            late = await self._late(conn)
        found = [e for e in fresh if e.id <= safe]
        self.safe = safe
        for sub in list(self._subscribers):
            if late:
                sub.offer(late, late=True)
            if found:
                sub.offer(found)
        return gap_since

    async def _late(self, conn: Any) -> list[FleetEvent]:
        """Missing ids that have committed since (handed out as late), the others kept until too old."""
        if not self.missing:
            return []
        now = time.monotonic()
        for stale in [i for i, at in self.missing.items() if now - at > MISSING_KEEP_S]:
            del self.missing[stale]
        if len(self.missing) > MISSING_MAX:
            for old in sorted(self.missing)[: len(self.missing) - MISSING_MAX]:
                del self.missing[old]
        found = await events_store.with_ids(conn, list(self.missing))
        for e in found:
            self.missing.pop(e.id, None)
        return found


class EventService:
    def __init__(self, core: Core) -> None:
        self.core = core
        #: Set when the coordinator stops: every follower ends (its stream closes), so none holds it up.
        self._stopping = asyncio.Event()
        self.feed = EventFeed(core, self._stopping)

    def close(self) -> None:
        self._stopping.set()

    async def after(
        self,
        caller: Principal,
        after_id: int,
        limit: int = 500,
        up_to: int | None = None,
        newest: bool = False,
    ) -> list[FleetEvent]:
        """Events past ``after_id``, oldest first, that ``caller`` may see (an admin: all; anyone else its
        organization's and the shared fleet's node events)."""
        async with self.core.store.read() as conn:
            return await events_store.after(
                conn,
                after_id,
                organization_id=caller.organization_id,
                admin=caller.admin,
                limit=limit,
                up_to=up_to,
                newest=newest,
            )

    async def newest_id(self) -> int:
        async with self.core.store.read() as conn:
            return await events_store.newest_id(conn)

    async def follow(
        self, caller: Principal, after_id: int, gone: Callable[[], bool] = lambda: False
    ) -> AsyncIterator[list[FleetEvent]]:
        """Batches of events past ``after_id`` as they are written, in id order; an empty batch after
        IDLE_S without any. Ends when the consumer stops iterating, when ``gone`` says its client left
        (checked every poll, not only at the next write), or when the coordinator stops."""
        last = after_id
        idle_since = time.monotonic()
        sub = await self.feed.subscribe()
        try:
            while not self._stopping.is_set() and not gone():
                if sub.overflowed:  # fell behind: the table has what the queue dropped
                    self.feed.unsubscribe(sub)
                    sub = await self.feed.subscribe()
                # What the table has up to where the feed took over (a resumed client, a lagging one).
                while last < sub.start:
                    found = await self.after(caller, last, PAGE, up_to=sub.start)
                    if not found:
                        break
                    last = found[-1].id
                    idle_since = time.monotonic()
                    yield found
                try:
                    late, batch = await asyncio.wait_for(sub.queue.get(), POLL_S * 4)
                except TimeoutError:
                    if time.monotonic() - idle_since >= IDLE_S:
                        idle_since = time.monotonic()
                        yield []
                    continue
                seen = [
                    e
                    for e in batch
                    if (late or e.id > last)
                    and events_store.visible(e, organization_id=caller.organization_id, admin=caller.admin)
                ]
                if seen:
                    last = max(last, seen[-1].id)
                    idle_since = time.monotonic()
                    yield seen
        finally:
            self.feed.unsubscribe(sub)

    async def prune(self) -> int:
        before = self.core.clock() - self.core.config.events.retention_s
        async with self.core.store.write() as conn:
            return await events_store.prune(conn, before)

    async def run_pruning(self, leading: Callable[[], bool] = lambda: True) -> None:
        """Forever, every ``events.prune_every_s``, while this coordinator leads (one prunes for all)."""
        while True:
            await asyncio.sleep(self.core.config.events.prune_every_s)
            if not leading():
                continue
            try:
                pruned = await self.prune()
            except Exception:
                log.exception("pruning events failed; retrying at the next one")
                continue
            if pruned:
                log.info("events pruned", count=pruned)
