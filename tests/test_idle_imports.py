"""The running bot does not carry libraries it only needs elsewhere (issue 14 item 6):
Alembic is imported only when the database is behind head, redis only with REDIS_URL,
and a few libraries (LAZY) only on first use.
Checked in a fresh interpreter: this test process has imported both already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from db.engine import create_engine
from db.migrate import at_head, upgrade_to_head
from tests.harness import database_url, running_env

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import asyncio, json, sys
from db.engine import create_engine
from db.migrate import upgrade_to_head
import bot.app  # everything the running bot imports

async def main(url):
    engine = create_engine(url)
    await upgrade_to_head(engine)
    await engine.dispose()

asyncio.run(main(sys.argv[1]))
print(json.dumps({name: name in sys.modules for name in sys.argv[2:]}))
"""
# Imported on first use, never by an idle bot on SQLite (issue 14 item 6): Fernet on the
# first key encrypted or decrypted, markdown-it on the first chat answer, segno on the
# first invoice QR code, SQLAlchemy's PostgreSQL dialect only on PostgreSQL.
LAZY = ("cryptography", "markdown_it", "segno", "sqlalchemy.dialects.postgresql")


def _probe(url: str, *modules: str) -> dict[str, bool]:
    done = subprocess.run(  # noqa: S603 (our own interpreter and script)
        [sys.executable, "-c", PROBE, url, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    loaded: dict[str, bool] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


async def test_a_start_on_a_database_at_head_imports_no_alembic(tmp_path: Path) -> None:
    url = database_url(tmp_path)
    async with running_env(tmp_path):  # migrates the (wiped) database to head
        pass
    engine = create_engine(url)
    try:
        assert await at_head(engine)
    finally:
        await engine.dispose()
    assert _probe(url, "alembic", "redis") == {"alembic": False, "redis": False}


async def test_the_idle_bot_imports_no_library_it_uses_only_later(tmp_path: Path) -> None:
    url = database_url(tmp_path)
    async with running_env(tmp_path):
        pass
    loaded = _probe(url, *LAZY)
    on_postgres = url.startswith("postgresql")
    assert loaded == {name: on_postgres and "postgresql" in name for name in LAZY}


async def test_a_database_behind_head_is_still_migrated(tmp_path: Path) -> None:
    url = database_url(tmp_path)
    async with running_env(tmp_path):
        pass
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            # Back to 0006: undo 0007 (chat_messages), 0008 (funds_ledger.balance_at) and
            # 0009 (funds_ledger.generation).
            await connection.execute(text("UPDATE alembic_version SET version_num = '0006'"))
            await connection.execute(text("DROP TABLE chat_messages"))
            await connection.execute(text("ALTER TABLE funds_ledger DROP COLUMN balance_at"))
            await connection.execute(text("ALTER TABLE funds_ledger DROP COLUMN generation"))
        assert not await at_head(engine)
        await upgrade_to_head(engine)
        assert await at_head(engine)
        async with engine.connect() as connection:
            await connection.execute(text("SELECT count(*) FROM chat_messages"))
            await connection.execute(text("SELECT balance_at, generation FROM funds_ledger"))
    finally:
        await engine.dispose()
