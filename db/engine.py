"""Engine and session factory for SQLite (default) and PostgreSQL.

SQLite: WAL (readers don't block the writer), a busy timeout, and every transaction
that may write started with BEGIN IMMEDIATE so it takes the write lock up front — a
deferred transaction that reads and then writes can fail on lock upgrade ("database is
locked") whatever the busy timeout; an immediate one just waits its turn.

Sessions that only read come from ``read_session_factory``: on SQLite they begin
DEFERRED, so they read a WAL snapshot without queueing behind the single writer (a
read-only lookup under load waited ~250 ms for the write lock it never needed). A
write through such a session is refused before it reaches the database, so "read
only" is enforced, not a convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import PoolResetState

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option marking an engine view (and so its connections) as read-only.
READ_ONLY = "app_read_only"
# What a read-only session may run: queries and transaction control (no DML/DDL).
_READ_VERBS = frozenset(
    {"SELECT", "WITH", "PRAGMA", "SHOW", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"}
)


class ReadOnlyViolation(RuntimeError):
    """A statement that may write was run through a read-only session."""


@dataclass(frozen=True)
class PoolSize:
    """The connection pool (DATABASE_POOL_* settings): the one place its size is set;
    the admission limits of the bursty paths are derived from it (``Admission``)."""

    size: int = 10
    overflow: int = 10
    # A checkout that waits longer fails (``QueuePool limit ... timed out``).
    timeout: float = 30.0

    @property
    def connections(self) -> int:
        return self.size + self.overflow

    def admission(self) -> Admission:
        return Admission.of(self)


@dataclass(frozen=True)
class Admission:
    """How many payment callbacks, and how many buyers' deliveries, may use the database
    at once. A burst (1,000 callbacks at once) then queues in the bot, with no time
    limit, rather than at the pool, whose wait fails after ``PoolSize.timeout`` (a 500
    to the provider, a failed delivery attempt). The bound is what matters, not a
    tight share: a waiter at the pool waits behind at most (callbacks + deliveries +
    the outbox sender's <= 8 sends + the funds batch + jobs) / connections short
    transactions, far from the timeout. Callbacks get the pool (one short transaction
    each); deliveries four times the pool, because each holds a connection only a small
    part of its time (it mostly waits for OpenRouter and for the funds batch) and a
    batch forms only from deliveries in flight together (40 paid at once, five deliveries
    at a time took 3x the funds leases per order)."""

    callbacks: int
    deliveries: int

    @classmethod
    def of(cls, pool: PoolSize) -> Admission:
        return cls(callbacks=pool.connections, deliveries=4 * pool.connections)


def create_engine(url: str, *, echo: bool = False, pool: PoolSize | None = None) -> AsyncEngine:
    pool = pool or PoolSize()
    sizing = {"pool_size": pool.size, "max_overflow": pool.overflow, "pool_timeout": pool.timeout}
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        in_memory = not database or database == ":memory:"  # one shared connection
        engine = create_async_engine(
            url,
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            # The reset is ours: see _install_sqlite_reset.
            pool_reset_on_return=None,
            **({} if in_memory else sizing),
        )
        _install_sqlite_pragmas(engine)
        _install_sqlite_reset(engine)
    else:
        # pre_ping: a connection the server dropped (a restart, a failover) is replaced
        # before use instead of failing a transaction. Measured here at ~0.1 ms CPU per
        # checkout (~1 ms of the ~50 ms a confirmed order costs): kept.
        engine = create_async_engine(url, echo=echo, pool_pre_ping=True, **sizing)
    _install_read_only_guard(engine)
    return engine


def _install_read_only_guard(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _guard(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not conn.get_execution_options().get(READ_ONLY):
            return
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
        if verb not in _READ_VERBS:
            raise ReadOnlyViolation(f"write in a read-only session: {statement[:60]}")


def _install_sqlite_pragmas(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's own
        # implicit BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Readers take a snapshot (deferred); writers queue for the lock up front.
        read_only = conn.get_execution_options().get(READ_ONLY)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _install_sqlite_reset(engine: AsyncEngine) -> None:
    """Roll back a connection returned to the pool only if it is in a transaction.

    The pool's default reset calls ``rollback()`` on every connection it gets back, also
    after a ``COMMIT``, when there is nothing to roll back: with aiosqlite that is one
    more trip through the connection's thread (~50 µs of CPU) per transaction, about one
    per update of the buy flow. SQLite itself knows whether a transaction is open
    (``in_transaction``, i.e. ``sqlite3_get_autocommit``): a connection returned
    mid-transaction (a session closed without commit, an error) is still rolled back
    here, so none goes back to the pool holding a transaction or the write lock
    (tests/test_db.py). asyncpg needs no such hook: SQLAlchemy's adapter already skips a
    rollback when it started no transaction.
    """

    @event.listens_for(engine.sync_engine, "reset")
    def _reset(dbapi_connection: Any, _record: Any, state: PoolResetState) -> None:
        if not state.asyncio_safe:
            # Garbage-collected outside the event loop: the pool terminates the connection
            # instead of resetting it (as with the default reset).
            return
        if state.transaction_was_reset:
            return  # SQLAlchemy rolled it back on close just now
        # A cancelled or failed statement invalidates the connection (SQLAlchemy treats
        # an exit exception as a disconnect), so nothing still runs on aiosqlite's thread
        # here and reading the flag from this thread is safe.
        driver = dbapi_connection.driver_connection
        if driver is not None and driver.in_transaction:
            dbapi_connection.rollback()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def read_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for reading only (module docstring): same pool, no write lock on SQLite."""
    return async_sessionmaker(engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)


async def wipe_postgres(url: str) -> None:
    """Drop and recreate the ``public`` schema of the PostgreSQL database at ``url``
    (tests and the chaos bench start from an empty database)."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()
