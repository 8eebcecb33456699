"""Readiness: can this replica do its work right now? (GET /readyz)

Each check answers within a timeout, concurrently; any failure makes the answer 503
naming the failing check, so an orchestrator or a load balancer stops counting on this
replica (and an operator sees why) while liveness (/healthz) still says the process is
up. The checks:

- ``database``: ``SELECT 1``.
- ``redis``: ``PING``, only when REDIS_URL is set (the FSM and shared limits live there).
- ``scheduler``: the job scheduler is running.
- ``outbox``: no buyer or admin message has been due for longer than the threshold
  without being sent. Broadcast rows are left out: a large broadcast is paced on
  purpose and may legitimately stay due for a while.
- ``telegram``: the last call to Telegram got an answer, or its failures have lasted
  less than the grace (a short blip is not an outage; no call yet is fine).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from core.metrics import TelegramSeen
from db.models import OutboxMessage
from db.status import OutboxStatus


class CheckFailed(Exception):
    """A readiness check's reason for failing (shown in the 503 body)."""


@dataclass(frozen=True)
class Report:
    checks: dict[str, str]  # name → "ok" or the reason it failed

    @property
    def ok(self) -> bool:
        return all(value == "ok" for value in self.checks.values())

    @property
    def failing(self) -> list[str]:
        return [name for name, value in self.checks.items() if value != "ok"]

    def body(self) -> dict[str, Any]:
        return {"ok": self.ok, "failing": self.failing, "checks": self.checks}


class Readiness:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        scheduler_running: Callable[[], bool],
        telegram: TelegramSeen,
        redis_ping: Callable[[], Awaitable[object]] | None = None,
        outbox_stuck: timedelta = timedelta(minutes=5),
        telegram_grace: timedelta = timedelta(minutes=2),
        timeout: float = 2.0,
    ) -> None:
        self.sessions = sessions
        self.scheduler_running = scheduler_running
        self.telegram_seen = telegram
        self.redis_ping = redis_ping
        self.outbox_stuck = outbox_stuck
        self.telegram_grace = telegram_grace
        self.timeout = timeout

    async def run(self) -> Report:
        checks: dict[str, Callable[[], Awaitable[None]]] = {
            "database": self.database,
            "scheduler": self.scheduler,
            "outbox": self.outbox,
            "telegram": self.telegram,
        }
        if self.redis_ping is not None:
            checks["redis"] = self.redis
        results = await asyncio.gather(*(self.answer(check) for check in checks.values()))
        return Report(dict(zip(checks, results, strict=True)))

    async def answer(self, check: Callable[[], Awaitable[None]]) -> str:
        try:
            await asyncio.wait_for(check(), self.timeout)
        except TimeoutError:
            return f"no answer within {self.timeout:g}s"
        except CheckFailed as exc:
            return str(exc)
        except Exception as exc:  # any error is a failed check, named, never a 500
            return f"{type(exc).__name__}: {exc}"[:300]
        return "ok"

    async def database(self) -> None:
        async with self.sessions() as session:
            await session.execute(text("SELECT 1"))

    async def redis(self) -> None:
        assert self.redis_ping is not None
        await self.redis_ping()

    async def scheduler(self) -> None:
        if not self.scheduler_running():
            raise CheckFailed("scheduler not running")

    async def outbox(self) -> None:
        overdue_since = utcnow() - self.outbox_stuck
        async with self.sessions() as session:
            stuck = (
                await session.execute(
                    select(func.count()).where(
                        OutboxMessage.status == OutboxStatus.PENDING.value,
                        OutboxMessage.broadcast_id.is_(None),
                        OutboxMessage.next_attempt_at < overdue_since,
                    )
                )
            ).scalar_one()
        if stuck:
            seconds = int(self.outbox_stuck.total_seconds())
            raise CheckFailed(f"{stuck} message(s) due for over {seconds}s and not sent")

    async def telegram(self) -> None:
        seen = self.telegram_seen
        if seen.failing_since is None:
            return
        failing_for = time.monotonic() - seen.failing_since
        if failing_for > self.telegram_grace.total_seconds():
            raise CheckFailed(f"no answer from Telegram for {int(failing_for)}s: {seen.last_error}")
