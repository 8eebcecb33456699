"""The daily and weekly admin reports (SPEC §6): messages the system sends by itself.

Every report is written to the outbox under a dedupe key naming its period
(``daily-report:2024-05-01``, ``weekly-report:2024-W18``), so a double run, a second
process or a catch-up after downtime sends it once. Their texts are worded here, not in
``bot/``: nobody asked for them on a screen; ``bot/admin_screens.py`` reuses the figures'
wording for /stats and /balance.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from core.money import format_usd
from db.models import OutboxMessage
from locales import Markup, Phrase, Translator, translator
from processing.admin_ops import AdminOps, Balance
from services.admin_ledger import AdminLedger, Period, Stats, days_period
from services.admin_topics import AlertCategory
from services.errors import ExternalError
from services.notify import Notifier

log = logging.getLogger(__name__)

# A run missed while the loop was busy or the machine slept still happens once
# (processing/scheduler.py).
REPORT_MISFIRE_GRACE = 6 * 3600
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class AdminReports:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        ledger: AdminLedger,
        ops: AdminOps,
        notifier: Notifier,
        *,
        timezone: str = "UTC",
        report_time: str = "09:00",
        weekly_day: str = "mon",
    ) -> None:
        self.sessions = sessions
        self.ledger = ledger
        self.ops = ops
        self.notifier = notifier
        self.timezone = timezone
        self.zone = ZoneInfo(timezone)
        hours, _, minutes = report_time.partition(":")
        self.report_hour, self.report_minute = int(hours), int(minutes)
        self.weekly_day = weekly_day

    def local_now(self, now: datetime | None = None) -> datetime:
        return (now or utcnow()).astimezone(self.zone)

    async def daily_report(self, day: date) -> bool:
        """The report for local ``day``; False when it was already queued."""
        return await self._report(
            f"daily-report:{day.isoformat()}",
            "admin_report.daily_title",
            days_period(day, day, self.timezone),
        )

    async def weekly_report(self, monday: date) -> bool:
        """The report for the ISO week starting on local ``monday``."""
        year, week, _ = monday.isocalendar()
        return await self._report(
            f"weekly-report:{year}-W{week:02d}",
            "admin_report.weekly_title",
            days_period(monday, monday + timedelta(days=6), self.timezone),
            week=f"{year}-W{week:02d}",
        )

    async def run_daily_due(self, now: datetime | None = None) -> bool:
        """Job: report yesterday (the last whole local day)."""
        return await self.daily_report(self.local_now(now).date() - timedelta(days=1))

    async def run_weekly_due(self, now: datetime | None = None) -> bool:
        """Job: report the last whole ISO week."""
        today = self.local_now(now).date()
        this_monday = today - timedelta(days=today.weekday())
        return await self.weekly_report(this_monday - timedelta(days=7))

    async def catch_up(self, now: datetime | None = None) -> None:
        """At start: a report whose time passed while we were down is sent now.

        Only when this database has sent such reports before — a fresh install starts
        with the next scheduled one instead of a report about days it never saw."""
        local = self.local_now(now)
        due_time = local.replace(
            hour=self.report_hour, minute=self.report_minute, second=0, microsecond=0
        )
        if local < due_time:
            return
        async with self.sessions() as session:
            has_daily = await _has_any(session, "daily-report:%")
            has_weekly = await _has_any(session, "weekly-report:%")
        if has_daily:
            await self.run_daily_due(now)
        if has_weekly and local.weekday() == WEEKDAYS.index(self.weekly_day):
            await self.run_weekly_due(now)

    async def _report(self, dedupe: str, title_key: str, period: Period, **title: Any) -> bool:
        async with self.sessions() as session:
            if await _has_any(session, dedupe):
                return False  # sent already: no need to ask OpenRouter again
        stats = await self.ledger.stats(period)
        t = translator(self.notifier.admin_language)
        try:
            balance = balance_text(t, await self.ops.balance())
        except ExternalError as exc:
            balance = t("admin_report.balance_unavailable", error=str(exc))
        text = "\n\n".join(
            [
                t(
                    title_key,
                    first=period.first_day.isoformat(),
                    last=period.last_day.isoformat(),
                    tz=self.timezone,
                    **title,
                ),
                stats_text(t, stats),
                balance,
            ]
        )
        async with self.sessions() as session, session.begin():
            queued = await self.notifier.admin_text(
                session, text, dedupe=dedupe, category=AlertCategory.REPORTS
            )
        if not queued:
            return False
        log.info("report_queued key=%s", dedupe)
        return True


async def _has_any(session: AsyncSession, pattern: str) -> bool:
    column = OutboxMessage.dedupe_key
    condition = column.like(pattern) if "%" in pattern else column == pattern
    return (
        await session.execute(select(OutboxMessage.id).where(condition).limit(1))
    ).first() is not None


def stats_text(t: Translator, stats: Stats) -> str:
    text: str = t(
        "admin_report.stats",
        created=stats.created,
        paid=stats.paid,
        delivered=stats.delivered,
        revenue=format_usd(stats.revenue),
        base=format_usd(stats.base_cost),
        markup=format_usd(stats.markup),
        pending=stats.pending,
        awaiting_funds=stats.awaiting_funds,
        failed=stats.failed,
        refunded=stats.refunded,
        expired=stats.expired,
    )
    if stats.by_provider:
        items = Markup(" · ").join(
            t("admin_report.provider_item", provider=name, count=count, revenue=format_usd(earned))
            for name, count, earned in stats.by_provider
        )
        text = f"{text}\n{t('admin_report.by_provider', items=items)}"
    if stats.attention:
        orders = " · ".join(f"#{order_id}" for order_id in stats.attention)
        more = stats.attention_total - len(stats.attention)
        line = (
            t("admin_report.attention_more", orders=orders, more=more)
            if more > 0
            else t("admin_report.attention", orders=orders)
        )
        text = f"{text}\n{line}"
    return text


def balance_text(t: Translator, balance: Balance) -> str:
    return t(
        "admin_report.balance",
        available=format_usd(balance.available),
        committed=format_usd(balance.committed),
        headroom=format_usd(balance.headroom),
        keys=Phrase("unit.keys", count=balance.keys),
    )
