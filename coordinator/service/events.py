"""Fleet events: every instance state change and node status change is written with the change itself
(store/events.py); this reads them with the caller's visibility and prunes them past the retention."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from common.logging import get
from coordinator.domain.records import FleetEvent, Principal
from coordinator.service.core import Core
from coordinator.store import events as events_store

log = get("coordinator.events")

#: How often a follower looks for new events: a change reaches it within this (plus its commit).
POLL_S = 0.2
#: On PostgreSQL ids are drawn before commit, so a lower id can commit after a higher one, and a rolled
#: back transaction leaves a gap for good. A follower goes past a gap only once it has waited this long
#: for it to fill: it delivers in id order, and a client resuming with Last-Event-ID misses nothing and
#: gets nothing twice.
GAP_WAIT_S = 0.5
#: A follower with nothing to say for this long says so (the stream's keepalive).
IDLE_S = 15.0


class EventService:
    def __init__(self, core: Core) -> None:
        self.core = core
        #: Set when the coordinator stops: every follower ends (its stream closes), so none holds it up.
        self._stopping = asyncio.Event()

    def close(self) -> None:
        self._stopping.set()

    async def after(self, caller: Principal, after_id: int, limit: int = 500) -> list[FleetEvent]:
        """Events past ``after_id``, oldest first, that ``caller`` may see (an admin: all; anyone else its
        organization's and the shared fleet's node events)."""
        async with self.core.store.read() as conn:
            return await events_store.after(
                conn, after_id, organization_id=caller.organization_id, admin=caller.admin, limit=limit
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
        last = safe = after_id
        gap_since: float | None = None
        idle_since = time.monotonic()
        while not self._stopping.is_set() and not gone():
            async with self.core.store.read() as conn:
                ids = await events_store.ids_after(conn, safe)
                # Go as far as the ids are contiguous; past a gap only once it is old enough.
                for event_id in ids:
                    if event_id == safe + 1:
                        safe, gap_since = event_id, None
                        continue
                    now = time.monotonic()
                    gap_since = gap_since if gap_since is not None else now
                    if now - gap_since < GAP_WAIT_S:
                        break
                    safe, gap_since = event_id, None
                found = []
                if safe > last:
                    found = await events_store.after(
                        conn,
                        last,
                        organization_id=caller.organization_id,
                        admin=caller.admin,
                        up_to=safe,
                        limit=1000,
                    )
            if found:
                last = found[-1].id
                idle_since = time.monotonic()
                yield found
            elif time.monotonic() - idle_since >= IDLE_S:
                idle_since = time.monotonic()
                yield []
            if len(found) < 1000:
                last = max(last, safe)  # nothing more this caller may see up to there
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), POLL_S)

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
