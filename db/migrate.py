"""Bring a database to the newest schema (Alembic ``head``) from inside the app or tests.

Replicas starting together would each run the same migrations and collide (two
``CREATE TABLE``s, two version-row updates). On PostgreSQL the upgrade holds a
transaction-level advisory lock: the second replica waits, then finds the schema at head
and does nothing. SQLite is one file on one host and the supported set-up runs one
replica on it (docs/deploy.md), so it takes no lock.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parent.parent


def alembic_config() -> Config:
    return Config(str(ROOT / "alembic.ini"))


async def upgrade_to_head(engine: AsyncEngine) -> None:
    await _run(engine, lambda cfg: command.upgrade(cfg, "head"))


async def downgrade_to(engine: AsyncEngine, revision: str) -> None:
    await _run(engine, lambda cfg: command.downgrade(cfg, revision))


# pg_advisory_xact_lock key: any fixed bigint that nothing else in the database uses.
MIGRATION_LOCK = 0x41_49_54_4B_4D_49_47  # "AITKMIG"


async def _run(engine: AsyncEngine, action: Callable[[Config], None]) -> None:
    def work(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            # Released with the transaction, so a replica killed mid-migration frees it.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        action(cfg)

    async with engine.begin() as connection:
        await connection.run_sync(work)
