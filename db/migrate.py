"""Bring a database to the newest schema (Alembic ``head``) from inside the app or tests.

Replicas starting together would each run the same migrations and collide (two
``CREATE TABLE``s, two version-row updates). On PostgreSQL the upgrade holds a
transaction-level advisory lock: the second replica waits, then finds the schema at head
and does nothing. SQLite is one file on one host and the supported set-up runs one
replica on it (docs/deploy.md), so it takes no lock.

Alembic is imported only when there is something to migrate: once imported it stays
resident (about 11 MiB, not given back when its modules are dropped), and a bot that
restarts on a database already at head has no use for it (issue 14 item 6). Whether
the database is at head is read from ``alembic_version`` against the head revision
named in ``db/migrations/versions`` (parsed, not imported).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ROOT / "db" / "migrations" / "versions"


def alembic_config() -> Config:
    from alembic.config import Config

    return Config(str(ROOT / "alembic.ini"))


async def upgrade_to_head(engine: AsyncEngine) -> None:
    if await at_head(engine):
        return
    from alembic import command

    await _run(engine, lambda cfg: command.upgrade(cfg, "head"))


async def downgrade_to(engine: AsyncEngine, revision: str) -> None:
    from alembic import command

    await _run(engine, lambda cfg: command.downgrade(cfg, revision))


def head_revision(versions: Path = VERSIONS) -> str | None:
    """The one revision no other revises; None when that is not clear-cut (Alembic
    decides then)."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in versions.glob("*.py"):
        values: dict[str, object] = {}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.AnnAssign | ast.Assign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and node.value is not None:
                        try:
                            values[target.id] = ast.literal_eval(node.value)
                        except ValueError:
                            continue
        revision, down = values.get("revision"), values.get("down_revision")
        if not isinstance(revision, str) or not (down is None or isinstance(down, str)):
            return None  # a merge or an unusual file: leave it to Alembic
        revisions.add(revision)
        if down is not None:
            revised.add(down)
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


async def at_head(engine: AsyncEngine) -> bool:
    head = head_revision()
    if head is None:
        return False

    def current(connection: Connection) -> list[str]:
        if not inspect(connection).has_table("alembic_version"):
            return []
        rows = connection.execute(text("SELECT version_num FROM alembic_version"))
        return [str(row[0]) for row in rows]

    async with engine.connect() as connection:
        return await connection.run_sync(current) == [head]


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
