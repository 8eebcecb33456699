"""Scheduled buyer messages against the emulators: payment reminders, the expiry notice,
low-quota alerts (one paged GET /keys sweep), the daily usage summary."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from core.clock import utcnow
from core.money import format_crypto
from db.models import ApiKey, OutboxMessage, User
from processing.alerts import alert_level, used_share
from services.errors import OpenRouterError
from services.preferences import Preference
from tests.harness import Env, running_env

BUYER = 717171


# ------------------------------------------------------------------ helpers
async def _outbox_keys(env: Env, prefix: str) -> list[str]:
    return [m.dedupe_key for m in await env.outbox() if (m.dedupe_key or "").startswith(prefix)]


async def _bot_texts(env: Env, chat_id: int, substring: str) -> list[str]:
    return [
        m["plain"] or ""
        for m in await env.tg.messages(chat_id)
        if m["from_bot"] and substring in (m["plain"] or "")
    ]


async def _drained(env: Env) -> None:
    """Wait until the outbox sender has sent everything queued."""
    for _ in range(200):
        if all(m.status != "pending" for m in await env.outbox()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("outbox not drained")


async def _user(env: Env, user_id: int) -> User:
    async with env.app.sessions() as session:
        user = await session.get(User, user_id)
        assert user is not None
        return user


async def _make_buyers(env: Env, ids: list[int], limit: Decimal) -> dict[int, str]:
    """Buyers written straight into the DB, each with a key created at the emulator
    through the Management API (POST /keys). Returns user id → key hash."""
    hashes: dict[int, str] = {}
    now = utcnow()
    for user_id in ids:
        info, _ = await env.app.openrouter.create_key(f"tg-{user_id}", limit)
        hashes[user_id] = info.hash
    async with env.app.sessions() as session, session.begin():
        for user_id in ids:
            session.add(User(id=user_id, language="en", created_at=now))
        await session.flush()
        for user_id in ids:
            session.add(
                ApiKey(
                    user_id=user_id,
                    name=f"tg-{user_id}",
                    openrouter_hash=hashes[user_id],
                    label="sk-or-v1-...",
                    encrypted_key=env.app.vault.encrypt("sk-or-v1-test"),
                    limit_usd=limit,
                    created_at=now,
                    updated_at=now,
                )
            )
    return hashes


async def _key_gets(env: Env, after: int) -> list[dict[str, Any]]:
    return [
        r
        for r in await env.orc.requests(after)
        if r["method"] == "GET" and r["path"].rstrip("/").endswith("/keys")
    ]


async def _last_seq(env: Env) -> int:
    return max((r["seq"] for r in await env.orc.requests()), default=0)


# -------------------------------------------------------------- pure logic
def test_alert_level_thresholds() -> None:
    assert alert_level(used_share(Decimal("10"), Decimal("7.99"))) == 0
    assert alert_level(used_share(Decimal("10"), Decimal("8"))) == 80
    assert alert_level(used_share(Decimal("10"), Decimal("9.49"))) == 80
    assert alert_level(used_share(Decimal("10"), Decimal("9.5"))) == 95
    assert alert_level(used_share(Decimal("10"), Decimal("12"))) == 95
    assert alert_level(used_share(None, Decimal("5"))) == 0  # unlimited key
    assert alert_level(used_share(Decimal("0"), Decimal("0"))) == 0  # nothing bought yet


# ---------------------------------------------------------------- reminders
async def test_reminder_sent_once_before_expiry(tmp_path: Path) -> None:
    async with running_env(tmp_path, reminder_minutes_before_expiry=30) as env:
        order_id = await env.buy(BUYER)
        # Two hours left: not yet.
        assert await env.app.alerts.run_reminders() == 0
        await env.update_order(order_id, expires_at=utcnow() + timedelta(minutes=12))
        assert await env.app.alerts.run_reminders() == 1
        assert await env.app.alerts.run_reminders() == 0  # run twice: nothing twice
        order = await env.order(order_id)
        assert order.reminder_sent is True and order.status == "awaiting_payment"
        assert [e.kind for e in await env.events(order_id)].count("reminder_sent") == 1
        assert await _outbox_keys(env, "reminder:") == [f"reminder:{order_id}"]

        message = await env.tg.wait_for_text(BUYER, f"Order #{order_id} is still waiting")
        text = message["plain"] or ""
        assert order.pay_address and order.pay_address in text
        assert order.crypto_amount is not None
        assert f"exactly {format_crypto(order.crypto_amount, order.asset)} USDT" in text
        assert "about 11 min left" in text or "about 12 min left" in text
        assert "🔄 Check payment" in [b["text"] for row in message["buttons"] for b in row]
        await _drained(env)
        assert len(await _bot_texts(env, BUYER, "is still waiting")) == 1


async def test_no_reminder_when_buyer_turned_reminders_off(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        prefs = await env.app.preferences.toggle(BUYER, Preference.REMINDERS)
        assert prefs.notify_reminders is False
        await env.update_order(order_id, expires_at=utcnow() + timedelta(minutes=5))
        assert await env.app.alerts.run_reminders() == 0
        assert (await env.order(order_id)).reminder_sent is False
        assert await _outbox_keys(env, "reminder:") == []


async def test_no_reminder_for_paid_or_expired_orders(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.update_order(order_id, expires_at=utcnow() - timedelta(minutes=1))
        assert await env.app.alerts.run_reminders() == 0  # already overdue: expiry's job
        await env.update_order(order_id, status="paid", expires_at=utcnow() + timedelta(minutes=5))
        assert await env.app.alerts.run_reminders() == 0


# ------------------------------------------------------------ expiry notice
async def test_expiry_notice_sent_once_when_the_job_runs_twice(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.age_order(order_id)
        results = await asyncio.gather(
            env.app.processor.expire_overdue(), env.app.processor.expire_overdue()
        )
        assert sorted(results) == [0, 1]
        assert await env.app.processor.expire_overdue() == 0
        assert await _outbox_keys(env, "expired:") == [f"expired:{order_id}"]
        await env.tg.wait_for_text(BUYER, f"Order #{order_id} expired without payment")
        await _drained(env)
        assert len(await _bot_texts(env, BUYER, "expired without payment")) == 1


# --------------------------------------------------------------- low quota
async def test_low_quota_alerts_cross_once_and_rearm_after_top_up(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        key = await env.api_key(BUYER)
        assert key is not None
        limit = key.limit_usd
        alerts = env.app.alerts

        # Below 80 %: nothing; the sweep still refreshes the cached figures.
        await env.orc.spend(key.openrouter_hash, limit * Decimal("0.5"))
        result = await alerts.run_quota_sweep()
        assert (result.matched, result.alerts, result.rearmed) == (1, 0, 0)
        cached = await env.api_key(BUYER)
        assert cached is not None and cached.last_checked_at is not None
        assert cached.last_limit == limit and cached.last_usage == limit * Decimal("0.5")
        assert cached.last_usage_daily == limit * Decimal("0.5")

        # 81 %: one 80 % alert, and a second sweep adds nothing.
        await env.orc.spend(key.openrouter_hash, limit * Decimal("0.31"))
        assert (await alerts.run_quota_sweep()).alerts == 1
        assert (await alerts.run_quota_sweep()).alerts == 0
        assert (await _user(env, BUYER)).quota_alert_level == 80
        await env.tg.wait_for_text(BUYER, "You have used 81%")

        # 96 %: one 95 % alert.
        await env.orc.spend(key.openrouter_hash, limit * Decimal("0.15"))
        assert (await alerts.run_quota_sweep()).alerts == 1
        assert (await alerts.run_quota_sweep()).alerts == 0
        assert (await _user(env, BUYER)).quota_alert_level == 95
        await env.tg.wait_for_text(BUYER, "You have used 96%")
        assert len(await _outbox_keys(env, f"quota:{BUYER}:")) == 2
        await _drained(env)
        assert len(await _bot_texts(env, BUYER, "You have used")) == 2

        # A top-up (a new paid order) halves the share: re-armed, no message.
        second = await env.buy(BUYER)
        await env.pay(second)
        await env.delivered_message(BUYER, second)
        result = await alerts.run_quota_sweep()
        assert (result.alerts, result.rearmed) == (0, 1)
        assert (await _user(env, BUYER)).quota_alert_level == 0
        assert len(await _outbox_keys(env, f"quota:{BUYER}:")) == 2

        # Past 80 % of the new limit again: alerted again.
        new_limit = (await env.api_key(BUYER)).limit_usd  # type: ignore[union-attr]
        assert new_limit > limit
        await env.orc.spend(
            key.openrouter_hash, new_limit * Decimal("0.85") - limit * Decimal("0.96")
        )
        assert (await alerts.run_quota_sweep()).alerts == 1
        assert (await _user(env, BUYER)).quota_alert_level == 80
        assert len(await _outbox_keys(env, f"quota:{BUYER}:80:")) == 2
        await env.tg.wait_for_text(BUYER, "You have used 85%")
        await _drained(env)
        # (Earlier alerts were edited into other screens when their buttons were pressed.)
        assert len(await _bot_texts(env, BUYER, "You have used 85%")) == 1
        sent = [m for m in await env.outbox() if (m.dedupe_key or "").startswith("quota:")]
        assert len(sent) == 3 and all(m.status == "sent" for m in sent)


async def test_sweep_of_150_keys_pages_get_keys_and_alerts_each_crossing_once(
    tmp_path: Path,
) -> None:
    async with running_env(tmp_path) as env:
        ids = list(range(900_000, 900_150))
        limit = Decimal("10.00")
        hashes = await _make_buyers(env, ids, limit)
        below, at_80, at_95, jump, muted = ids[0], ids[1], ids[2], ids[3], ids[4]
        await env.orc.spend(hashes[below], Decimal("7.99"))
        await env.orc.spend(hashes[at_80], Decimal("8.00"))
        await env.orc.spend(hashes[at_95], Decimal("8.50"))
        await env.orc.spend(hashes[jump], Decimal("9.70"))  # straight past 95 %
        await env.orc.spend(hashes[muted], Decimal("9.00"))
        async with env.app.sessions() as session, session.begin():
            # at_95 was already told about 80 % earlier.
            await session.execute(update(User).where(User.id == at_95).values(quota_alert_level=80))
            await session.execute(update(User).where(User.id == muted).values(notify_quota=False))
        await env.orc.spend(hashes[at_95], Decimal("1.00"))  # 95 %

        seq = await _last_seq(env)
        started = time.perf_counter()
        result = await env.app.alerts.run_quota_sweep()
        elapsed = time.perf_counter() - started
        gets = await _key_gets(env, seq)
        assert len(gets) == math.ceil(len(ids) / 100) == 2
        assert [g["query"].get("offset") for g in gets] == ["0", "100"]
        # Nothing else was asked of OpenRouter: no per-buyer GET /keys/{hash}.
        assert len(await env.orc.requests(seq)) == 2
        assert (result.keys_seen, result.matched, result.alerts) == (150, 150, 4)
        print(f"sweep of 150 keys: {len(gets)} GET /keys calls, {elapsed:.3f}s")

        keys = await _outbox_keys(env, "quota:")
        assert sorted(keys) == sorted(
            [
                f"quota:{at_80}:80:10.00",
                f"quota:{at_95}:95:10.00",
                f"quota:{jump}:95:10.00",  # only the 95 % alert, never 80 % first
            ]
        )
        levels = {u: (await _user(env, u)).quota_alert_level for u in (below, at_80, at_95, jump)}
        assert levels == {below: 0, at_80: 80, at_95: 95, jump: 95}
        # Muted: no message, but the crossing is recorded so it is not announced later.
        assert (await _user(env, muted)).quota_alert_level == 80

        # Run twice: the same two calls, no new alerts; every key's cache refreshed.
        seq = await _last_seq(env)
        again = await env.app.alerts.run_quota_sweep()
        assert again.alerts == 0 and len(await _key_gets(env, seq)) == 2
        assert len(await _outbox_keys(env, "quota:")) == 3
        async with env.app.sessions() as session:
            checked = (
                await session.execute(select(ApiKey.last_checked_at, ApiKey.last_usage))
            ).all()
        assert len(checked) == 150 and all(at is not None for at, _ in checked)


async def test_sweep_writes_each_page_before_asking_for_the_next(tmp_path: Path) -> None:
    """Pages are not held: with page 2 of GET /keys failing, page 1 is already written
    (figures, levels, alerts); the next sweep does the rest and repeats no alert."""
    async with running_env(tmp_path) as env:
        ids = list(range(910_000, 910_150))  # the emulator lists them in this order
        hashes = await _make_buyers(env, ids, Decimal("10.00"))
        first, second = ids[0], ids[120]  # on page 1 and page 2
        for user_id in (first, second):
            await env.orc.spend(hashes[user_id], Decimal("8.50"))
        await env.orc.add_fault(
            path="/api/v1/keys", method="GET", query={"offset": "100"}, status=503, count=None
        )
        with pytest.raises(OpenRouterError):
            await env.app.alerts.run_quota_sweep()
        await env.orc.clear_faults()
        async with env.app.sessions() as session:
            checked = dict(
                (await session.execute(select(ApiKey.user_id, ApiKey.last_checked_at))).all()
            )
        assert all(checked[u] is not None for u in ids[:100])
        assert all(checked[u] is None for u in ids[100:])
        assert await _outbox_keys(env, "quota:") == [f"quota:{first}:80:10.00"]
        assert (await _user(env, first)).quota_alert_level == 80
        assert (await _user(env, second)).quota_alert_level == 0

        result = await env.app.alerts.run_quota_sweep()
        assert (result.keys_seen, result.matched, result.alerts) == (150, 150, 1)
        assert sorted(await _outbox_keys(env, "quota:")) == sorted(
            [f"quota:{first}:80:10.00", f"quota:{second}:80:10.00"]
        )
        async with env.app.sessions() as session:
            unchecked = await session.execute(
                select(ApiKey.id).where(ApiKey.last_checked_at.is_(None))
            )
            assert unchecked.first() is None


async def test_sweep_leaves_keys_openrouter_no_longer_lists(tmp_path: Path) -> None:
    """A key deleted at OpenRouter keeps its last figures and its buyer's level."""
    async with running_env(tmp_path) as env:
        hashes = await _make_buyers(env, [BUYER + 20, BUYER + 21], Decimal("10.00"))
        gone, kept = BUYER + 20, BUYER + 21
        await env.app.openrouter.delete_key(hashes[gone])
        result = await env.app.alerts.run_quota_sweep()
        assert (result.keys_seen, result.matched) == (1, 1)
        assert (await env.api_key(kept)).last_checked_at is not None  # type: ignore[union-attr]
        assert (await env.api_key(gone)).last_checked_at is None  # type: ignore[union-attr]


async def test_quota_alerts_suppressed_when_turned_off(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        hashes = await _make_buyers(env, [BUYER + 1], Decimal("5.00"))
        buyer = BUYER + 1
        await env.app.preferences.toggle(buyer, Preference.QUOTA)
        await env.orc.spend(hashes[buyer], Decimal("4.90"))
        result = await env.app.alerts.run_quota_sweep()
        assert result.alerts == 1  # the crossing is recorded …
        assert await _outbox_keys(env, "quota:") == []  # … but nothing is sent
        # Turning alerts back on does not bring the old crossing back.
        await env.app.preferences.toggle(buyer, Preference.QUOTA)
        assert (await env.app.alerts.run_quota_sweep()).alerts == 0
        assert await _outbox_keys(env, "quota:") == []


async def test_quota_sweep_runs_on_its_schedule(tmp_path: Path) -> None:
    """Scheduler wiring: nobody calls the job; the alert arrives by itself."""
    async with running_env(tmp_path, quota_check_seconds=1) as env:
        jobs = {job.id for job in env.app.scheduler.get_jobs()}
        assert {"quota_sweep", "invoice_reminders", "daily_summary"} <= jobs
        order_id = await env.buy(BUYER)
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        key = await env.api_key(BUYER)
        assert key is not None
        await env.orc.spend(key.openrouter_hash, key.limit_usd * Decimal("0.9"))
        await env.tg.wait_for_text(BUYER, "You have used 90%", timeout=10)
        await asyncio.sleep(2.5)  # more scheduled sweeps: still one alert
        assert len(await _outbox_keys(env, f"quota:{BUYER}:")) == 1


# ------------------------------------------------------------ daily summary
async def test_daily_summary_queues_each_page_before_asking_for_the_next(
    tmp_path: Path,
) -> None:
    """Like the sweep, the summary holds one page of keys, not all: with page 2 of
    GET /keys failing, page 1's summary is already queued; the next run adds the rest."""
    async with running_env(tmp_path) as env:
        ids = list(range(920_000, 920_150))
        await _make_buyers(env, ids, Decimal("10.00"))
        first, second = ids[0], ids[120]  # on page 1 and page 2
        for user_id in (first, second):
            await env.app.preferences.toggle(user_id, Preference.SUMMARY)
        await env.orc.add_fault(
            path="/api/v1/keys", method="GET", query={"offset": "100"}, status=503, count=None
        )
        now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
        with pytest.raises(OpenRouterError):
            await env.app.alerts.run_daily_summary(now)
        await env.orc.clear_faults()
        summaries = [k for k in await _outbox_keys(env, "summary:") if ":2030-" in k]
        assert summaries == [f"summary:{first}:2030-01-01"]
        assert await env.app.alerts.run_daily_summary(now) == 1
        summaries = [k for k in await _outbox_keys(env, "summary:") if ":2030-" in k]
        assert sorted(summaries) == [f"summary:{u}:2030-01-01" for u in (first, second)]


async def test_daily_summary_only_for_opted_in_and_once_per_day(tmp_path: Path) -> None:
    async with running_env(tmp_path, timezone="Pacific/Kiritimati") as env:  # UTC+14
        opted, silent = BUYER + 10, BUYER + 11
        await env.tg.register_chat(opted, first_name="Opted")
        hashes = await _make_buyers(env, [opted, silent], Decimal("10.00"))
        await env.orc.spend(hashes[opted], Decimal("2.50"))
        await env.app.preferences.toggle(opted, Preference.SUMMARY)

        now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)  # 2030-01-02 02:00 in Kiritimati
        assert await env.app.alerts.run_daily_summary(now) == 1
        assert await env.app.alerts.run_daily_summary(now + timedelta(hours=3)) == 0
        # Only the simulated days count: the app's own start-up catch-up may also have
        # sent today's real summary (when the test runs after 20:00 in Kiritimati).
        keys = [k for k in await _outbox_keys(env, "summary:") if ":2030-" in k]
        assert keys == [f"summary:{opted}:2030-01-02"]
        # The next local day brings the next one.
        assert await env.app.alerts.run_daily_summary(now + timedelta(days=1)) == 1

        message = await env.tg.wait_for_text(opted, "Daily usage summary · 2030-01-02")
        text = message["plain"] or ""
        assert "Used today: $2.50" in text and "Remaining: $7.50" in text
        async with env.app.sessions() as session:
            silent_rows = (
                await session.execute(select(OutboxMessage).where(OutboxMessage.chat_id == silent))
            ).all()
        assert silent_rows == []


async def test_daily_summary_asks_nothing_when_nobody_opted_in(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await _make_buyers(env, [BUYER], Decimal("10.00"))
        seq = await _last_seq(env)
        assert await env.app.alerts.run_daily_summary() == 0
        assert await env.orc.requests(seq) == []
