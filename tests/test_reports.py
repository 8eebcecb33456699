"""Daily/weekly admin reports: figures equal a hand count, idempotent, scheduled in TIMEZONE."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from apscheduler.triggers.cron import CronTrigger

from core.clock import utcnow
from core.money import format_usd
from db.models import OutboxMessage
from tests.harness import running_env
from tests.test_admin import AUTH_FAULT, BUYER, BUYER2, BUYER3

BUYER4 = 747474


async def test_daily_report_matches_a_hand_count_and_is_sent_once(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        # One delivered, one failed, one still awaiting payment, one expired.
        good = await env.buy(BUYER)
        await env.pay(good)
        await env.wait_status(good, "delivered")
        bad = await env.buy(BUYER2)
        await env.orc.add_fault(**AUTH_FAULT)
        await env.pay(bad)
        await env.wait_status(bad, "failed")
        await env.orc.clear_faults()
        await env.buy(BUYER3)
        gone = await env.buy(BUYER4)
        await env.age_order(gone)
        assert await env.app.processor.expire_overdue() == 1

        g, b = await env.order(good), await env.order(bad)
        revenue = g.total_usd + b.total_usd
        base = g.base_usd + b.base_usd
        markup = g.markup_usd + b.markup_usd
        credits = (await env.orc.credits())["data"]
        available = Decimal(str(credits["total_credits"])) - Decimal(str(credits["total_usage"]))
        committed = g.base_usd  # the one key carries the one delivery, unspent

        today = utcnow().date()  # TIMEZONE is UTC here
        assert await env.app.reports.daily_report(today) is True
        assert await env.app.reports.daily_report(today) is False  # a double run
        report = await env.tg.wait_for_text(env.admin_chat, "Daily report")
        text = report["plain"]
        assert today.isoformat() in text
        assert "Orders created: 4 · paid: 2 · delivered: 1" in text, text
        assert f"Revenue: {format_usd(revenue)} (base cost {format_usd(base)}" in text
        assert f"markup earned {format_usd(markup)}" in text
        assert "Open now: 1 awaiting payment · 0 awaiting funds" in text
        assert "Failed: 1 · refunded: 0 · expired: 1" in text
        assert f"OpenRouter balance {format_usd(available)}" in text
        assert f"committed to 1 key {format_usd(committed)}" in text
        assert f"headroom {format_usd(available - committed)}" in text

        rows = [m for m in await env.outbox() if m.dedupe_key == f"daily-report:{today}"]
        assert len(rows) == 1
        sent = [m for m in await env.tg.messages(env.admin_chat) if "Daily report" in m["plain"]]
        assert len(sent) == 1

        # Yesterday had nothing: a report of zeros, under its own key.
        assert await env.app.reports.daily_report(today - timedelta(days=1)) is True
        zero = await env.tg.wait_for_text(
            env.admin_chat, f"Daily report {today - timedelta(days=1)}"
        )
        assert "Orders created: 0 · paid: 0 · delivered: 0" in zero["plain"]
        assert "Revenue: $0.00" in zero["plain"]


async def test_weekly_report_and_the_scheduled_jobs(tmp_path: Path) -> None:
    async with running_env(
        tmp_path, timezone="Asia/Tokyo", daily_report_time="08:30", weekly_report_day="tue"
    ) as env:
        ops = env.app.reports
        # 2024-05-08 00:30 in Tokyo is 2024-05-07 15:30 UTC: "yesterday" is Tokyo's 7 May.
        now = datetime(2024, 5, 7, 15, 30, tzinfo=UTC)
        assert await ops.run_daily_due(now) is True
        assert await ops.run_daily_due(now) is False
        assert await ops.run_weekly_due(now) is True  # the week of Mon 29 April
        assert await ops.run_weekly_due(now + timedelta(hours=2)) is False
        keys = {m.dedupe_key for m in await env.outbox()}
        assert {"daily-report:2024-05-07", "weekly-report:2024-W18"} <= keys
        await env.tg.wait_for_text(
            env.admin_chat, "Weekly report 2024-W18: 2024-04-29 … 2024-05-05"
        )

        daily = env.app.scheduler.get_job("daily_report")
        weekly = env.app.scheduler.get_job("weekly_report")
        assert isinstance(daily.trigger, CronTrigger) and isinstance(weekly.trigger, CronTrigger)
        assert str(daily.trigger.timezone) == "Asia/Tokyo"
        assert daily.coalesce and daily.misfire_grace_time >= 3600
        fire = daily.next_run_time.astimezone(daily.trigger.timezone)
        assert (fire.hour, fire.minute) == (8, 30)
        assert weekly.next_run_time.astimezone(weekly.trigger.timezone).strftime("%a") == "Tue"


async def test_a_report_missed_during_downtime_is_caught_up_once(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        ops = env.app.reports
        now = datetime(2024, 5, 8, 10, 0, tzinfo=UTC)  # after 09:00: the 7 May report is due
        await ops.catch_up(now)  # a fresh install: no report history, nothing sent
        assert not [m for m in await env.outbox() if (m.dedupe_key or "").startswith("daily")]
        assert await ops.daily_report(now.date() - timedelta(days=2)) is True  # we ran before
        await ops.catch_up(now)
        await ops.catch_up(now)
        rows: list[OutboxMessage] = [
            m for m in await env.outbox() if m.dedupe_key == "daily-report:2024-05-07"
        ]
        assert len(rows) == 1
        await ops.catch_up(datetime(2024, 5, 9, 8, 0, tzinfo=UTC))  # before 09:00: not yet
        assert not [m for m in await env.outbox() if m.dedupe_key == "daily-report:2024-05-08"]
