"""Fleet events: every instance state change and node status change is written with the change itself
(store/events.py); this reads them with the caller's visibility and prunes them past the retention."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from common.logging import get
from coordinator.domain.records import FleetEvent, Principal
from coordinator.service.core import Core
from coordinator.store import events as events_store

log = get("coordinator.events")


class EventService:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def after(self, caller: Principal, after_id: int, limit: int = 500) -> list[FleetEvent]:
        """Events past ``after_id``, oldest first, that ``caller`` may see (an admin: all; anyone else its
        organization's and the shared fleet's node events)."""
        async with self.core.store.read() as conn:
            return await events_store.after(
                conn, after_id, organization_id=caller.organization_id, admin=caller.admin, limit=limit
            )

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
