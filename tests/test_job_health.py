"""A scheduled job that keeps failing is told to the admin group once per streak, and its
recovery too (processing/job_health.py); a failed run used to be only logged."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path

import pytest

from db.models import OutboxMessage
from processing.job_health import EXTERNAL_GRACE, JobHealth
from processing.scheduler import guarded
from services.errors import ExternalError
from tests.harness import Env, running_env

sqlite_only = pytest.mark.skipif(
    (os.environ.get("TEST_DATABASE_URL") or "").startswith("postgresql"),
    reason="backups are of the SQLite database; PostgreSQL uses pg_dump",
)


async def admin_texts(env: Env, fragment: str) -> list[OutboxMessage]:
    return [
        row
        for row in await env.outbox()
        if row.chat_id == env.admin_chat and fragment in (row.text or "")
    ]


@sqlite_only
async def test_a_failing_backup_is_told_once_and_its_recovery_too(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.write_text("a file where the backup directory should be")
    async with running_env(tmp_path, backup_dir=str(backups), backup_keep=2) as env:
        job = env.app.scheduler.get_job("sqlite_backup")
        assert job is not None
        await job.func()  # the scheduled run: mkdir fails
        alert = await env.tg.wait_for_text(env.admin_chat, "sqlite_backup")
        assert "keeps failing" in alert["plain"] and "FileExistsError" in alert["plain"]

        await job.func()  # the same streak: no second alert
        assert len(await admin_texts(env, "keeps failing")) == 1

        backups.unlink()  # the operator fixes the directory
        await job.func()
        await env.tg.wait_for_text(env.admin_chat, "had been failing")
        assert len(list(backups.glob("bot-*.sqlite3"))) == 1
        await job.func()  # healthy runs say nothing more
        assert len(await admin_texts(env, "had been failing")) == 1


async def test_a_frequent_job_alerts_after_three_failed_runs(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        outcomes: list[Exception | None] = [RuntimeError("boom <b>"), RuntimeError("boom <b>")]

        async def job() -> None:
            outcome = outcomes.pop(0) if outcomes else None
            if outcome is not None:
                raise outcome

        health = JobHealth(env.app.notifier, env.app.sessions)
        run = guarded("flaky", job, health=health, alert_after=3)
        await run()
        await run()  # two failures, then a success: a blip, nothing told
        await run()
        assert await admin_texts(env, "flaky") == []

        outcomes[:] = [RuntimeError("boom <b>")] * 3
        for _ in range(3):
            await run()
        alert = await env.tg.wait_for_text(env.admin_chat, "flaky")
        assert "RuntimeError: boom <b>" in alert["plain"]  # escaped, shown as text
        await run()  # recovers
        await env.tg.wait_for_text(env.admin_chat, "had been failing")


async def test_an_unreachable_service_alerts_only_after_the_grace(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:

        async def job() -> None:
            raise ExternalError("openrouter", "connection refused", transient=True)

        health = JobHealth(env.app.notifier, env.app.sessions)
        run = guarded("prices", job, health=health, alert_after=3)
        for _ in range(5):
            await run()
        await asyncio.sleep(0.3)
        assert await admin_texts(env, "prices") == []  # weather, not yet a streak to tell

        health._streaks["prices"].since -= EXTERNAL_GRACE + timedelta(seconds=1)
        await run()
        alert = await env.tg.wait_for_text(env.admin_chat, "prices")
        assert "connection refused" in alert["plain"]
