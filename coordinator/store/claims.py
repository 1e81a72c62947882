"""Group commit for placement claims.

A durable commit costs an fsync (most of a claim's time on SQLite with synchronous=FULL). Claims that are
waiting at the same moment therefore share one transaction: each runs in its own SAVEPOINT, so a claim
that loses its race rolls back alone, and every caller hears its outcome only after the commit made it
durable. A lone claim is its own batch and waits for nobody.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.model import Allocation, Instance
from coordinator.store.engine import Store
from coordinator.store.regions import ClaimLost, claim

#: Claims per transaction at most: bounds how long one batch holds the writer.
MAX_BATCH = 64


@dataclass(slots=True)
class _Claim:
    inst: Instance
    ports: Sequence[int]
    port_count: int
    primary: int | None
    done: asyncio.Future[list[Allocation]]


class ClaimQueue:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._waiting: list[_Claim] = []
        self._drainer: asyncio.Task[None] | None = None

    async def claim(
        self, inst: Instance, *, ports: Sequence[int], port_count: int, primary: int | None
    ) -> list[Allocation]:
        """The allocations held, once durable; ClaimLost when the candidate was taken meanwhile."""
        done: asyncio.Future[list[Allocation]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Claim(inst, ports, port_count, primary, done))
        # Its own task, not the caller's: a caller that goes away must not strand the others' claims.
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="claim-batches")
        return await done

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            outcomes: list[tuple[_Claim, list[Allocation] | None]] = []
            try:
                async with self.store.write() as conn:
                    for item in batch:
                        try:
                            async with conn.begin_nested():
                                held = await claim(
                                    conn,
                                    item.inst,
                                    ports=item.ports,
                                    port_count=item.port_count,
                                    primary=item.primary,
                                )
                        except ClaimLost:
                            held = None
                        outcomes.append((item, held))
            except Exception as exc:  # the commit itself failed: nobody's claim holds
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                continue
            for item, held in outcomes:
                if held is None:
                    item.done.set_exception(ClaimLost("taken meanwhile"))
                else:
                    item.done.set_result(held)
