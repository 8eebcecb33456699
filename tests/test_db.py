"""Schema and column types (db/): Alembic stairway, model/migration parity, SQLite pragmas,
exact money and aware UTC time.

Runs on a temp SQLite file; the PostgreSQL cases run when TEST_DATABASE_URL is set
(its schema ``public`` is dropped and recreated first) and are skipped otherwise.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, MetaData, Table, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from db.engine import (
    ReadOnlyViolation,
    create_engine,
    read_session_factory,
    session_factory,
    wipe_postgres,
)
from db.migrate import alembic_config, downgrade_to, upgrade_to_head
from db.models import Base
from db.types import Money, UTCDateTime

PG_URL = os.environ.get("TEST_DATABASE_URL")
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgresql",
        id="postgresql",
        marks=pytest.mark.skipif(
            not PG_URL, reason="TEST_DATABASE_URL (postgresql+asyncpg://...) is not set"
        ),
    ),
]
APP_TABLES = {t.name for t in Base.metadata.sorted_tables}


@pytest.fixture(params=BACKENDS)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "postgresql":
        assert PG_URL
        await wipe_postgres(PG_URL)
        url = PG_URL
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'db' / 'test.db'}"
    eng = create_engine(url)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'types.db'}")
    try:
        yield eng
    finally:
        await eng.dispose()


# ----------------------------------------------------------------------- helpers
async def _alembic(engine: AsyncEngine, action: Callable[[Config], None]) -> None:
    """Run an alembic command on one of our engines, the way db.migrate does."""

    def work(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        action(cfg)

    async with engine.begin() as conn:
        await conn.run_sync(work)


async def _upgrade(engine: AsyncEngine, revision: str) -> None:
    await _alembic(engine, lambda cfg: command.upgrade(cfg, revision))


async def _current(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        names: list[str] = await conn.run_sync(lambda c: inspect(c).get_table_names())
    return set(names) - {"alembic_version"}


async def _schema_diff(engine: AsyncEngine) -> list[object]:
    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as conn:
        return await conn.run_sync(diff)


def _revisions() -> list[tuple[str, str]]:
    """(revision, the one below it or "base"), oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    steps: list[tuple[str, str]] = []
    for rev in reversed(list(script.walk_revisions())):
        down = rev.down_revision
        assert not isinstance(down, tuple | list), f"merge revision {rev.revision}: extend test"
        steps.append((rev.revision, down or "base"))
    return steps


def test_script_directory_has_a_single_head() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1
    assert _revisions()


# ------------------------------------------------------------------- migrations
async def test_stairway_head_base_head(engine: AsyncEngine) -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()

    await upgrade_to_head(engine)
    assert await _current(engine) == head
    assert await _tables(engine) == APP_TABLES

    await downgrade_to(engine, "base")
    assert await _current(engine) is None
    assert await _tables(engine) == set()

    await upgrade_to_head(engine)
    assert await _current(engine) == head
    assert await _tables(engine) == APP_TABLES


async def test_stairway_each_revision_up_down_up(engine: AsyncEngine) -> None:
    for revision, below in _revisions():
        await _upgrade(engine, revision)
        assert await _current(engine) == revision
        await downgrade_to(engine, below)
        assert await _current(engine) == (None if below == "base" else below)
        await _upgrade(engine, revision)
        assert await _current(engine) == revision


async def test_migrated_schema_matches_the_models(engine: AsyncEngine) -> None:
    await upgrade_to_head(engine)
    assert await _schema_diff(engine) == []


async def test_upgrade_to_head_is_idempotent(engine: AsyncEngine) -> None:
    await upgrade_to_head(engine)
    await upgrade_to_head(engine)
    assert await _tables(engine) == APP_TABLES


# ------------------------------------------------------------------ SQLite setup
async def test_sqlite_pragmas_are_in_force(sqlite_engine: AsyncEngine, tmp_path: Path) -> None:
    async with sqlite_engine.connect() as conn:
        journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
        busy = (await conn.execute(text("PRAGMA busy_timeout"))).scalar()
        foreign_keys = (await conn.execute(text("PRAGMA foreign_keys"))).scalar()
    assert str(journal).lower() == "wal"
    assert busy is not None and int(busy) >= 1000
    assert foreign_keys == 1


async def test_sqlite_parent_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "deeper" / "bot.db"
    eng = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with eng.connect() as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        await eng.dispose()
    assert path.exists()


async def test_sqlite_foreign_keys_are_enforced(sqlite_engine: AsyncEngine) -> None:
    await upgrade_to_head(sqlite_engine)
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    with pytest.raises(Exception, match="FOREIGN KEY"):
        async with sqlite_engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO order_events (order_id, at, kind, actor) "
                    "VALUES (424242, :at, 'created', 'test')"
                ),
                {"at": now},
            )


async def test_sqlite_reads_do_not_wait_for_the_writer(
    sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    """A read-only session reads its WAL snapshot while another connection holds the
    write lock; a writer's session still queues for the lock (BEGIN IMMEDIATE)."""
    await upgrade_to_head(sqlite_engine)
    reads = read_session_factory(sqlite_engine)
    writes = session_factory(sqlite_engine)
    holder = sqlite3.connect(tmp_path / "types.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer, mid-transaction
        async with reads() as session:
            count = await asyncio.wait_for(
                session.scalar(text("SELECT count(*) FROM users")), timeout=2
            )
        assert count == 0

        async def write() -> None:
            async with writes() as session, session.begin():
                await session.execute(text("SELECT count(*) FROM users"))

        writer = asyncio.create_task(write())
        await asyncio.sleep(0.5)
        assert not writer.done()  # waiting for the lock the holder keeps
        holder.execute("COMMIT")
        await asyncio.wait_for(writer, timeout=5)
    finally:
        holder.close()


async def test_read_only_sessions_refuse_writes(engine: AsyncEngine) -> None:
    await upgrade_to_head(engine)
    with pytest.raises(ReadOnlyViolation):
        async with read_session_factory(engine)() as session, session.begin():
            await session.execute(text("UPDATE users SET language = 'en'"))
    async with session_factory(engine)() as session, session.begin():
        await session.execute(text("UPDATE users SET language = 'en'"))


# ------------------------------------------------- connections back in the pool
async def _in_transaction(engine: AsyncEngine) -> bool:
    """Whether the pool's next connection (the one just returned: the pool is LIFO for
    a single task) is inside a transaction, asked of the driver itself."""
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        if engine.dialect.name == "sqlite":
            return bool(raw.in_transaction)
        return bool(raw.is_in_transaction())


async def _users(engine: AsyncEngine) -> int:
    async with read_session_factory(engine)() as session:
        return int(await session.scalar(text("SELECT count(*) FROM users")) or 0)


INSERT_USER = text(
    "INSERT INTO users (id, language, reachable, created_at) VALUES (:id, 'en', true, :at)"
)


async def test_no_connection_goes_back_to_the_pool_mid_transaction(engine: AsyncEngine) -> None:
    """Every way our code leaves a transaction open when it gives a connection back (a
    session closed without commit, an error inside ``begin()``, a connection closed
    without commit, a read session): the write is gone and the connection is clean. On
    SQLite the pool's reset is ours (db/engine.py ``_install_sqlite_reset``)."""
    await upgrade_to_head(engine)
    writes = session_factory(engine)
    at = datetime.now(UTC)

    async with writes() as session:
        await session.execute(INSERT_USER, {"id": 1, "at": at})  # closed, not committed
    assert not await _in_transaction(engine)

    with pytest.raises(RuntimeError):
        async with writes() as session, session.begin():
            await session.execute(INSERT_USER, {"id": 2, "at": at})
            raise RuntimeError("handler failed mid-transaction")
    assert not await _in_transaction(engine)

    async with engine.connect() as conn:
        await conn.execute(INSERT_USER, {"id": 3, "at": at})  # autobegun, never committed
    assert not await _in_transaction(engine)

    async with read_session_factory(engine)() as session:
        await session.execute(text("SELECT count(*) FROM users"))
    assert not await _in_transaction(engine)

    assert await _users(engine) == 0
    async with writes() as session, session.begin():
        await session.execute(INSERT_USER, {"id": 4, "at": at})
    assert not await _in_transaction(engine)
    assert await _users(engine) == 1


async def test_sqlite_a_transaction_the_session_did_not_see_is_rolled_back(
    sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    """The reset asks SQLite, not SQLAlchemy's bookkeeping: a transaction opened behind
    SQLAlchemy's back is still rolled back, and the write lock is free afterwards."""
    await upgrade_to_head(sqlite_engine)
    async with sqlite_engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        await raw.execute("BEGIN IMMEDIATE")
        await raw.execute(
            "INSERT INTO users (id, language, reachable, created_at) "
            "VALUES (9, 'en', 1, '2026-01-01 00:00:00.000000')"
        )
    assert not await _in_transaction(sqlite_engine)
    assert await _users(sqlite_engine) == 0
    other = sqlite3.connect(tmp_path / "types.db", isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")  # "database is locked" if the lock were held
        other.execute("ROLLBACK")
    finally:
        other.close()


async def test_sqlite_a_committed_transaction_costs_no_reset_rollback(
    sqlite_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a COMMIT the pool's reset does not send a ROLLBACK through aiosqlite's
    thread (one trip per transaction, ~50 µs of CPU, on every update that writes)."""
    import aiosqlite

    await upgrade_to_head(sqlite_engine)
    rollbacks: list[object] = []
    real = aiosqlite.Connection.rollback

    async def counted(self: aiosqlite.Connection) -> None:
        rollbacks.append(self)
        await real(self)

    monkeypatch.setattr(aiosqlite.Connection, "rollback", counted)
    async with session_factory(sqlite_engine)() as session, session.begin():
        await session.execute(INSERT_USER, {"id": 1, "at": datetime.now(UTC)})
    assert rollbacks == []
    async with session_factory(sqlite_engine)() as session:
        await session.execute(INSERT_USER, {"id": 2, "at": datetime.now(UTC)})
    assert len(rollbacks) == 1  # closed without commit: rolled back, once
    assert await _users(sqlite_engine) == 1


# ----------------------------------------------------------------- column types
MONEY_TABLE_MD = MetaData()
MONEY_TABLE = Table(
    "money_probe",
    MONEY_TABLE_MD,
    Column("id", Integer, primary_key=True),
    Column("amount", Money(28, 12)),
    Column("at", UTCDateTime()),
)

EXACT_AMOUNTS = [
    Decimal("0.000000000001"),
    Decimal("19.80"),
    Decimal("12345678.12345678"),
    Decimal("0"),
    Decimal("-3.50"),
    Decimal("1E-12"),
    Decimal("0.00018486"),
]


async def _roundtrip(engine: AsyncEngine, **values: object) -> dict[str, object]:
    async with engine.begin() as conn:
        await conn.run_sync(MONEY_TABLE_MD.create_all)
        row_id = (await conn.execute(MONEY_TABLE.insert().values(**values))).inserted_primary_key
        assert row_id is not None
    async with engine.connect() as conn:
        row = (await conn.execute(select(MONEY_TABLE).where(MONEY_TABLE.c.id == row_id[0]))).one()
    return dict(row._mapping)


@pytest.mark.parametrize("amount", EXACT_AMOUNTS, ids=str)
async def test_money_roundtrips_exactly_on_sqlite(
    sqlite_engine: AsyncEngine, amount: Decimal
) -> None:
    row = await _roundtrip(sqlite_engine, amount=amount)
    got = row["amount"]
    assert isinstance(got, Decimal)
    assert got == amount
    assert format(got, "f") == format(amount, "f")  # every digit, trailing zeros too
    # Stored as exact text, not a binary REAL.
    async with sqlite_engine.connect() as conn:
        raw = (await conn.execute(text("SELECT amount, typeof(amount) FROM money_probe"))).one()
    assert raw[1] == "text"
    assert raw[0] == format(amount, "f")


async def test_money_int_is_accepted_as_decimal(sqlite_engine: AsyncEngine) -> None:
    row = await _roundtrip(sqlite_engine, amount=20)
    assert row["amount"] == Decimal(20)
    assert isinstance(row["amount"], Decimal)


async def test_money_none_stays_none(sqlite_engine: AsyncEngine) -> None:
    row = await _roundtrip(sqlite_engine, amount=None, at=None)
    assert row["amount"] is None
    assert row["at"] is None


@pytest.mark.parametrize("bad", [19.8, 0.1, "19.80"])
async def test_money_refuses_non_decimals(sqlite_engine: AsyncEngine, bad: object) -> None:
    with pytest.raises(TypeError, match="Decimal"):
        Money().process_bind_param(bad, sqlite.dialect())
    with pytest.raises(TypeError, match="Decimal"):
        Money().process_bind_param(bad, postgresql.dialect())
    with pytest.raises(StatementError) as error:
        await _roundtrip(sqlite_engine, amount=bad)
    assert isinstance(error.value.orig, TypeError)


@settings(max_examples=200, deadline=None)
@given(units=st.integers(-(10**16), 10**16), places=st.integers(0, 12))
def test_money_sqlite_processors_are_lossless(units: int, places: int) -> None:
    amount = Decimal(units).scaleb(-places)
    money = Money(28, 12)
    dialect = sqlite.dialect()
    stored = money.process_bind_param(amount, dialect)
    assert isinstance(stored, str)
    assert "E" not in stored.upper()
    back = money.process_result_value(stored, dialect)
    assert back == amount
    assert back is not None and back.as_tuple().exponent == amount.as_tuple().exponent


async def test_utc_datetime_returns_aware_utc(sqlite_engine: AsyncEngine) -> None:
    moscow = timezone(timedelta(hours=3))
    moment = datetime(2025, 4, 21, 15, 30, 45, 123456, tzinfo=moscow)
    row = await _roundtrip(sqlite_engine, at=moment)
    got = row["at"]
    assert isinstance(got, datetime)
    assert got.tzinfo is not None
    assert got.utcoffset() == timedelta(0)
    assert got == moment
    assert got == datetime(2025, 4, 21, 12, 30, 45, 123456, tzinfo=UTC)


async def test_utc_datetime_refuses_naive(sqlite_engine: AsyncEngine) -> None:
    naive = datetime(2025, 4, 21, 12, 0)
    with pytest.raises(TypeError, match="naive"):
        UTCDateTime().process_bind_param(naive, sqlite.dialect())
    with pytest.raises(StatementError) as error:
        await _roundtrip(sqlite_engine, at=naive)
    assert isinstance(error.value.orig, TypeError)


def test_utc_datetime_result_processing() -> None:
    dt = UTCDateTime()
    naive = datetime(2025, 1, 1, 0, 0)
    assert dt.process_result_value(naive, sqlite.dialect()) == naive.replace(tzinfo=UTC)
    plus_two = datetime(2025, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    out = dt.process_result_value(plus_two, postgresql.dialect())
    assert out is not None
    assert out.tzinfo is UTC
    assert out == datetime(2025, 1, 1, 0, 0, tzinfo=UTC)
