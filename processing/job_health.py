"""Tells the admin group when a periodic job keeps failing, and when it works again.

``processing.scheduler.guarded`` keeps a failed run from reaching APScheduler and the
next run tries again — a retry with its reason in the log. That is enough for a blip,
not for a job that fails every time: a backup that cannot write its file fails once a
day, and nobody reads the log until the day the backup is needed. So a streak of failed
runs becomes an alert (once per streak, deduplicated by its start), and the first run
that succeeds after an alert says so.

When a streak counts:
- a failure that is a bug (anything but ``ExternalError``) after ``alert_after`` runs in a
  row — 1 for daily and weekly jobs (the next try is a day away), 3 for the others;
- an unreachable service (``ExternalError``, expected weather that the provider alerts
  already cover run by run) only once it has lasted ``EXTERNAL_GRACE`` as well.

The streak is kept per process: with replicas sharing Redis a job runs where it is
claimed, so a streak split between replicas alerts later, never twice (the dedupe key).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import format_utc, utcnow
from services.notify import Notifier

log = logging.getLogger(__name__)

EXTERNAL_GRACE = timedelta(minutes=15)
ERROR_CHARS = 300  # an alert quotes the start of the error, not a traceback


@dataclass
class Streak:
    since: datetime
    failures: int = 0
    alerted: bool = False


class JobHealth:
    def __init__(self, notifier: Notifier, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.notifier = notifier
        self.sessions = sessions
        self._streaks: dict[str, Streak] = {}

    async def failed(self, job: str, error: str, *, external: bool, alert_after: int) -> None:
        now = utcnow()
        streak = self._streaks.setdefault(job, Streak(since=now))
        streak.failures += 1
        if streak.alerted or streak.failures < alert_after:
            return
        if external and now - streak.since < EXTERNAL_GRACE:
            return
        if await self._tell(
            "admin.job_failing",
            dedupe=f"job-failing:{job}:{streak.since.isoformat()}",
            job=job,
            since=format_utc(streak.since),
            error=error[:ERROR_CHARS],
        ):
            streak.alerted = True

    async def succeeded(self, job: str) -> None:
        streak = self._streaks.pop(job, None)
        if streak is None or not streak.alerted:
            return
        await self._tell(
            "admin.job_recovered",
            dedupe=f"job-recovered:{job}:{streak.since.isoformat()}",
            job=job,
            since=format_utc(streak.since),
        )

    async def _tell(self, key: str, *, dedupe: str, **params: Any) -> bool:
        """Queue the alert; False (logged) when the database itself refuses, so the
        next failed run tries again."""
        try:
            async with self.sessions() as session, session.begin():
                await self.notifier.admin(session, key, dedupe=dedupe, **params)
        except Exception:
            log.exception("job_health_alert_failed key=%s dedupe=%s", key, dedupe)
            return False
        return True
