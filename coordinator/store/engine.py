"""The one place that knows which database is underneath: engine creation, SQLite pragmas, write
transactions and migrations. Everything else speaks portable SQLAlchemy Core."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import await_

from common.logging import get
from coordinator.domain.failures import StoreBusy

log = get("coordinator.store")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_WRITE = "moorage_write"
T = TypeVar("T")
R = TypeVar("R")


async def execute_many(conn: AsyncConnection, statement: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """An executemany of plain values, compiled once and handed to the driver as is: SQLAlchemy's own
    executemany builds and processes a parameter dict per row, which dominated the heartbeat batch writer
    at a thousand nodes. Values must already be what the driver takes (JSON as text)."""
    if not rows:
        return
    compiled = statement.compile(dialect=conn.dialect)
    if compiled.positional:
        order = compiled.positiontup or []
        await conn.exec_driver_sql(compiled.string, [tuple(row[name] for name in order) for row in rows])
    else:
        await conn.exec_driver_sql(compiled.string, list(rows))


#: Rows an executemany of the batch writer takes at a time: each chunk's rows are built and sent while
#: heartbeats wait on the event loop, so a fleet's batch is sent in slices, not in one stall of tens of ms.
CHUNK = 500


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Sql(Protocol):
    """Runs one plain-SQL statement (named ``:params``, portable between SQLite and PostgreSQL) inside a
    batch and returns its rows as tuples."""

    def __call__(self, statement: str, params: Mapping[str, Any] | None = None, /) -> Sequence[Any]: ...

    def many(self, statement: str, rows: Sequence[Mapping[str, Any]], /) -> Sequence[Any]:
        """The statement once per parameter set, in order, and the rows of them all. On PostgreSQL one
        round trip (the driver pipelines them), which is what a batch's locks are held for."""
        ...


class Transact(Protocol):
    """Runs ``work`` as one transaction on the writer's connection, committed (durable) when it returns;
    rolled back whole when ``work`` raises."""

    def __call__(self, work: Callable[[Sql], T], /) -> T: ...


#: Advisory lock keys (PostgreSQL): one per first-start step that must not run twice at once.
_ADVISORY = {"migrate": 7_420_001, "bootstrap": 7_420_002}


async def exclusive(conn: AsyncConnection, step: str) -> None:
    """Hold ``step``'s lock until the caller's transaction ends. PostgreSQL: a transaction-scoped advisory
    lock (every coordinator on the database waits its turn). SQLite: nothing to do, a write transaction
    (BEGIN IMMEDIATE) already excludes every other writer of the file."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY[step]})


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'moorage.db'}"


def normalize_url(url: str) -> str:
    """Accept the URLs operators write (postgresql://, sqlite:///) and pick the async driver."""
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    return url


#: SQLSTATEs after which the same transaction may succeed if tried again: the database chose it as a
#: deadlock's victim or could not serialize it...
RETRIED = frozenset({"40P01", "40001"})
#: ...and those after which nothing was written but the caller may try again later: a lock it did not get,
#: the server shutting down or refusing connections, a connection lost.
TRANSIENT = RETRIED | {"55P03", "57P01", "57P02", "57P03", "08000", "08001", "08003", "08004", "08006"}
#: Tries of one transaction of plain statements (Store.batch, Store.on_writer) on a deadlock.
ATTEMPTS = 3


def sqlstate(exc: BaseException) -> str:
    return str(getattr(getattr(exc, "orig", None), "sqlstate", "") or "")


def transient(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and (exc.connection_invalidated or sqlstate(exc) in TRANSIENT)


def as_busy(exc: Exception) -> Exception:
    """StoreBusy for a transient failure (the cause chained), else the failure itself."""
    if not transient(exc):
        return exc
    code = sqlstate(exc) or "connection lost"
    log.warning("the database could not serve a transaction", sqlstate=code, error=str(exc))
    busy = StoreBusy(f"the database is busy ({code}); try again")
    busy.__cause__ = exc
    return busy


@contextlib.contextmanager
def busy_when_transient() -> Iterator[None]:
    try:
        yield
    except DBAPIError as exc:
        raise as_busy(exc) from exc


class Store:
    """Hands out connections: ``read()`` for queries, ``write()`` for one short write transaction.

    On SQLite a write transaction starts with BEGIN IMMEDIATE (so two writers never deadlock upgrading
    their locks) and writers of this process queue on an asyncio lock instead of spinning on busy_timeout.
    """

    def __init__(self, engine: AsyncEngine, *, synchronous: str = "FULL") -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        self._synchronous = synchronous
        self._writer: ThreadPoolExecutor | None = None
        self._raw: sqlite3.Connection | None = None
        #: Called after every commit of this process (the event feed wakes on them rather than polling).
        self._commit_listeners: list[Callable[[], None]] = []
        if self.is_sqlite:
            _install_sqlite_hooks(engine, synchronous)

    @classmethod
    def open(cls, url: str, *, synchronous: str = "FULL") -> Store:
        url = normalize_url(url)
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        return cls(create_async_engine(url, **kwargs), synchronous=synchronous)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        with busy_when_transient():
            async with self.engine.connect() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One transaction, committed on normal exit: durable before the caller acknowledges anything. A
        transaction the database gave up on (a deadlock's victim, a lost connection) is StoreBusy: its
        body holds the caller's awaits, so it cannot be run again here."""
        lock = self._write_lock or contextlib.nullcontext()
        with busy_when_transient():
            async with lock, self.engine.connect() as conn:
                await conn.execution_options(**{_WRITE: True})
                async with conn.begin():
                    yield conn
        self._committed()

    def on_commit(self, listener: Callable[[], None]) -> None:
        self._commit_listeners.append(listener)

    def _committed(self) -> None:
        for listener in self._commit_listeners:
            listener()

    async def batch(self, work: Callable[[Sql], T]) -> T:
        """Run ``work`` (plain SQL statements, no awaits) as one write transaction, committed before this
        returns."""
        return await self.on_writer(lambda transact: transact(work))

    async def on_writer(self, job: Callable[[Transact], R]) -> R:
        """Run ``job`` holding the write lock; it may run several transactions back to back, each durable
        when its ``transact`` call returns. On SQLite the whole job runs on one dedicated writer thread with
        its own connection: one thread hop for many statements and transactions, instead of one per
        statement (aiosqlite's cost), which is what lets placement claims keep up. Elsewhere it runs on a
        pooled connection through SQLAlchemy."""
        if self._write_lock is None:
            with busy_when_transient():
                async with self.engine.connect() as conn:
                    done = await conn.run_sync(
                        lambda sync: job(functools.partial(_sqlalchemy_transaction, sync))
                    )
        else:
            async with self._write_lock:
                if self._writer is None:
                    self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
                loop = asyncio.get_running_loop()
                done = await loop.run_in_executor(self._writer, self._on_writer_thread, job)
        self._committed()
        return done

    def _on_writer_thread(self, job: Callable[[Transact], R]) -> R:
        if self._raw is None:
            database = self.engine.url.database
            assert database, "the writer thread needs a database file"
            self._raw = sqlite3.connect(database, timeout=30, isolation_level=None, check_same_thread=False)
            _configure_sqlite(self._raw, self._synchronous)
        return job(functools.partial(_raw_transaction, self._raw))

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent). On PostgreSQL under an advisory
        lock: coordinators starting at once on an empty database migrate one after the other (the first
        does the work, the others find it done)."""
        async with self.engine.connect() as conn:
            await conn.execution_options(**{_WRITE: True})  # SQLite: BEGIN IMMEDIATE, the writers' queue
            async with conn.begin():
                await exclusive(conn, "migrate")
                await conn.run_sync(_upgrade)

    async def close(self) -> None:
        if self._writer is not None:
            raw, self._raw = self._raw, None
            if raw is not None:
                await asyncio.get_running_loop().run_in_executor(self._writer, raw.close)
            self._writer.shutdown(wait=True)
            self._writer = None
        await self.engine.dispose()


class _RawSql:
    """The SQLite writer thread's statements, on its own connection."""

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def __call__(self, statement: str, params: Mapping[str, Any] | None = None, /) -> Sequence[Any]:
        return self.raw.execute(statement, params or {}).fetchall()

    def many(self, statement: str, rows: Sequence[Mapping[str, Any]], /) -> Sequence[Any]:
        return [row for params in rows for row in self(statement, params)]


def _raw_transaction(raw: sqlite3.Connection, work: Callable[[Sql], T]) -> T:
    raw.execute("BEGIN IMMEDIATE")
    try:
        result = work(_RawSql(raw))
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise
    return result


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=256)
def _positional(statement: str) -> tuple[str, tuple[str, ...]]:
    """A statement's ``:name`` parameters as PostgreSQL's ``$n``, and the names in their order (each name
    once: a repeated one reuses its number)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _NAMED.sub(number, statement), tuple(names)


class _PooledSql:
    """Statements on a pooled SQLAlchemy connection, inside run_sync (so the driver's coroutines can be
    awaited from here)."""

    def __init__(self, sync: Connection) -> None:
        self.sync = sync
        self.postgres = sync.dialect.name == "postgresql"

    def __call__(self, statement: str, params: Mapping[str, Any] | None = None, /) -> Sequence[Any]:
        if self.postgres:
            # Straight to the driver: the claim path's statements are plain SQL with plain values, and
            # SQLAlchemy's text() parsing and binding cost more than the round trip.
            positional, names = _positional(statement)
            values = params or {}
            result = self.sync.exec_driver_sql(positional, tuple(values[n] for n in names))
        else:
            result = self.sync.execute(text(statement), dict(params or {}))
        return result.all() if result.returns_rows else []

    def many(self, statement: str, rows: Sequence[Mapping[str, Any]], /) -> Sequence[Any]:
        adapter: Any = self.sync.connection.dbapi_connection
        if not self.postgres or not rows or getattr(adapter, "_transaction", None) is None:
            # Only inside the transaction the adapter has begun on the server (a statement through it went
            # first): on its own, fetchmany would commit apart from the rest of the work.
            return [row for params in rows for row in self(statement, params)]
        # asyncpg's fetchmany sends every Bind/Execute before one Sync: one round trip for them all. It
        # runs inside the transaction SQLAlchemy's adapter began (a statement through it went first).
        positional, names = _positional(statement)
        driver = self.sync.connection.driver_connection
        assert driver is not None
        try:
            records = await_(driver.fetchmany(positional, [tuple(r[n] for n in names) for r in rows]))
        except Exception as exc:
            raise _as_dbapi_error(self.sync, exc, invalidated=driver.is_closed()) from exc
        return [tuple(record) for record in records]


def _as_dbapi_error(sync: Connection, exc: Exception, *, invalidated: bool) -> Exception:
    """A driver's own exception as SQLAlchemy would have raised it (a DBAPIError carrying the SQLSTATE),
    so the retry and StoreBusy rules read it as they read every other statement's; a connection the error
    closed is marked so, and not retried on."""
    adapter: Any = sync.connection.dbapi_connection
    try:
        adapter._handle_exception(exc)
    except Exception as translated:
        return DBAPIError.instance(
            None, None, translated, sync.dialect.loaded_dbapi.Error, connection_invalidated=invalidated
        )
    return exc


def _sqlalchemy_transaction(sync: Connection, work: Callable[[Sql], T]) -> T:
    sql = _PooledSql(sync)
    # ``work`` is plain statements, no awaits: a deadlock's victim runs again at once (the winner holds
    # its locks no longer), a few times before the caller hears StoreBusy.
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with sync.begin():
                return work(sql)
        except DBAPIError as exc:
            if sqlstate(exc) not in RETRIED or attempt == ATTEMPTS or sync.invalidated:
                raise
            log.info("a transaction is tried again", sqlstate=sqlstate(exc), attempt=attempt)
    raise AssertionError("unreachable")


def _configure_sqlite(dbapi_conn: Any, synchronous: str) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    # Switching a new file to WAL needs it to itself; a second process opening it at the same moment gets
    # "database is locked" at once (SQLite does not wait there), so it tries again until one of them has
    # switched it (WAL is then the file's mode for good).
    for attempt in range(100):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except Exception as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    # Pages read through a memory map instead of a read() call each: most of a busy writer's time otherwise.
    cursor.execute("PRAGMA mmap_size=268435456")
    cursor.close()


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    # Alembic narrates every step on INFO in plain text; our own log line (JSON) says what changed.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    before = MigrationContext.configure(connection).get_current_revision()
    command.upgrade(alembic_config(connection), "head")
    after = MigrationContext.configure(connection).get_current_revision()
    if before != after:
        log.info("database migrated", from_revision=before, to_revision=after)


def _install_sqlite_hooks(engine: AsyncEngine, synchronous: str) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the driver so BEGIN is ours to emit (see "begin" below).
        dbapi_conn.isolation_level = None
        _configure_sqlite(dbapi_conn, synchronous)

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")
