"""Daily SQLite backups (BACKUP_DIR, BACKUP_KEEP): the scheduled job of the running bot
writes a consistent copy that opens and holds the orders, and keeps only the newest."""

from __future__ import annotations

import logging
import os
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from bot.app import BotApp
from bot.settings import load_settings
from core.clock import utcnow
from processing.backup import SqliteBackup, sqlite_path
from tests.harness import running_env

BUYER = 515151

sqlite_only = pytest.mark.skipif(
    (os.environ.get("TEST_DATABASE_URL") or "").startswith("postgresql"),
    reason="backups are of the SQLite database; PostgreSQL uses pg_dump",
)


@sqlite_only
async def test_backup_job_copies_the_live_database_and_keeps_the_newest(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    async with running_env(tmp_path, backup_dir=str(backups), backup_keep=2) as env:
        job = env.app.scheduler.get_job("sqlite_backup")
        assert job is not None, "BACKUP_DIR with SQLite registers the daily job"
        assert job.trigger.interval == timedelta(days=1)

        order_id = await env.buy(BUYER)
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)

        # The job as the scheduler runs it, three times, while the bot keeps running.
        for _ in range(3):
            await job.func()
        files = sorted(backups.iterdir())
        assert len(files) == 2, files  # pruned to BACKUP_KEEP
        assert all(f.name.startswith("bot-") and f.suffix == ".sqlite3" for f in files)

        copy = sqlite3.connect(files[-1])
        try:
            assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            rows = copy.execute("SELECT id, user_id, status FROM orders").fetchall()
            keys = copy.execute("SELECT user_id, encrypted_key FROM api_keys").fetchall()
        finally:
            copy.close()
        assert rows == [(order_id, BUYER, "delivered")]
        stored = await env.api_key(BUYER)
        assert stored is not None and keys == [(BUYER, stored.encrypted_key)]


def test_next_run_is_a_day_after_the_newest_backup(tmp_path: Path) -> None:
    database = tmp_path / "bot.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE t (x)")
    db.close()
    backup = SqliteBackup(database, tmp_path / "b", keep=7)
    assert backup.next_run() - utcnow() < timedelta(seconds=5)  # none yet: at once
    backup._backup()
    wait = backup.next_run() - utcnow()
    assert timedelta(hours=23, minutes=59) < wait <= timedelta(days=1)


def test_sqlite_path_only_for_sqlite_files() -> None:
    assert sqlite_path("sqlite+aiosqlite:///data/bot.db") == Path("data/bot.db")
    assert sqlite_path("sqlite+aiosqlite:///:memory:") is None
    assert sqlite_path("postgresql+asyncpg://postgres@127.0.0.1/db") is None


async def test_backup_dir_with_postgresql_warns_and_registers_no_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(
        bot_token="123:abc",
        database_url="postgresql+asyncpg://postgres@127.0.0.1:5432/nowhere",
        encryption_key=Fernet.generate_key().decode(),
        payment_providers=["kryptoexpress"],
        backup_dir=str(tmp_path / "backups"),
    )
    with caplog.at_level(logging.WARNING, logger="bot.app"):
        app = BotApp(settings)
    try:
        assert app.scheduler.get_job("sqlite_backup") is None
        assert any("pg_dump" in r.getMessage() for r in caplog.records), caplog.text
        assert not (tmp_path / "backups").exists()
    finally:
        await app.bot.session.close()
        await app.openrouter.aclose()
        await app.engine.dispose()
