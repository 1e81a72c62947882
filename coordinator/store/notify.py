"""The coordinators' bus on PostgreSQL: LISTEN/NOTIFY for messages, a session advisory lock for the leader.

One dedicated connection (not the pool's) carries both, so leadership lasts exactly as long as this
coordinator's connection: a coordinator that dies (even by SIGKILL) loses its lock when PostgreSQL sees the
connection close, and the next one to try takes it. The connection is re-made with back-off when lost;
messages sent meanwhile are lost too, which the receivers tolerate (ownership is re-read from the database
every batch period; a command without an answer is a wait that runs out).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import asyncpg

from common.logging import get

log = get("coordinator.cluster")

CHANNEL = "moorage_cluster"
#: How the bus's connection names itself in pg_stat_activity (operators see which backend leads).
APPLICATION_NAME = "moorage-coordinator-bus"
LEADER_LOCK = 7_420_003
TRY_LEAD = "SELECT pg_try_advisory_lock($1)"
NOTIFY = "SELECT pg_notify($1, $2)"
#: NOTIFY payloads are limited to 8000 bytes; messages here are ids and short texts.
MAX_PAYLOAD = 7_900
#: No statement on the bus's connection may take longer: a half-open connection (the database failed over,
#: a network path died) is given up and made again instead of hanging every publisher behind it.
STATEMENT_TIMEOUT_S = 5.0


def asyncpg_dsn(url: str) -> str:
    """The store's SQLAlchemy URL as asyncpg takes it."""
    scheme, rest = url.split("://", 1)
    if not scheme.startswith("postgres"):
        raise ValueError(f"the coordinators' bus needs PostgreSQL, not {scheme}")
    return "postgresql://" + rest


class PgBus:
    def __init__(self, url: str, on_message: Callable[[dict[str, Any]], None], retry_s: float = 1.0) -> None:
        self._dsn = asyncpg_dsn(url)
        self._on_message = on_message
        self._retry_s = retry_s
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # one statement at a time on the connection
        self.leading = False
        #: Set while the connection is up and listening.
        self.listening = asyncio.Event()

    async def run(self) -> None:
        """Keep the connection, the LISTEN and (when free) the leader's lock, until cancelled."""
        while True:
            try:
                await self._connect()
                while not self._conn_lost():
                    await self._turn()
                    await asyncio.sleep(self._retry_s)
                log.warning("the coordinators' bus connection was lost; reconnecting")
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("the coordinators' bus is down; retrying", error=str(exc))
            await self._drop()
            await asyncio.sleep(self._retry_s)

    async def _connect(self) -> None:
        conn = await asyncpg.connect(
            self._dsn, timeout=STATEMENT_TIMEOUT_S, server_settings={"application_name": APPLICATION_NAME}
        )
        try:
            await conn.add_listener(CHANNEL, self._received)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self.listening.set()

    def _conn_lost(self) -> bool:
        return self._conn is None or self._conn.is_closed()

    async def _turn(self) -> None:
        """Prove the connection, and try for the leader's lock while not leading. Leading or not, a dead
        connection is found within a turn: a leader on one has lost its lock to the next coordinator."""
        async with self._lock:
            conn = self._conn
            if conn is None or conn.is_closed():
                return
            try:
                if self.leading:
                    await conn.fetchval("SELECT 1", timeout=STATEMENT_TIMEOUT_S)
                    return
                got = await conn.fetchval(TRY_LEAD, LEADER_LOCK, timeout=STATEMENT_TIMEOUT_S)
            except TimeoutError:
                conn.terminate()
                raise
        if got:
            self.leading = True
            log.info("this coordinator leads (health of unheld nodes, sweeps)")

    async def _drop(self) -> None:
        if self.leading:
            log.warning("this coordinator no longer leads")
        self.leading = False
        self.listening.clear()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
        elif conn is not None:
            conn.terminate()

    def _received(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            log.warning("an unreadable message on the coordinators' bus", payload=payload[:200])
            return
        if isinstance(message, dict):
            self._on_message(message)

    async def publish(self, message: dict[str, Any]) -> bool:
        """Send to every coordinator (this one too); False when the bus is down."""
        payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        if len(payload.encode()) > MAX_PAYLOAD:
            log.error("a message too large for NOTIFY was dropped", kind=message.get("t"))
            return False
        try:
            async with self._lock:
                conn = self._conn
                if conn is None or conn.is_closed():
                    return False
                try:
                    await conn.execute(
                        "SELECT pg_notify($1, $2)", CHANNEL, payload, timeout=STATEMENT_TIMEOUT_S
                    )
                except TimeoutError:
                    conn.terminate()
                    raise
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("a message to the other coordinators was lost", error=str(exc))
            return False
        return True

    async def close(self) -> None:
        await self._drop()
