"""Scheduled messages to buyers (SPEC §6): payment reminders, low-quota alerts, the
daily usage summary. The expiry notice itself is written by
``AITokenPaymentProcessor.expire_overdue`` (dedupe ``expired:<order>``).

Every job is a plain async method (tests call them directly) and safe to run twice,
concurrently, or late after downtime:

- reminders: ``orders.reminder_sent`` flipped by compare-and-set
  (``UPDATE … WHERE reminder_sent = false``); only the run that flips it queues the
  message, whose outbox dedupe key ``reminder:<order>`` is a second guard;
- low-quota alerts: ``users.quota_alert_level`` moved by compare-and-set
  (``UPDATE … WHERE quota_alert_level = <value read>``); only the run that moves it
  up queues the alert (dedupe ``quota:<user>:<level>:<limit>`` — the limit changes with
  each top-up, so a re-armed threshold can fire again);
- daily summary: outbox dedupe key ``summary:<user>:<local date>``.

OpenRouter is read with ONE paged sweep of ``GET /keys`` (100 keys per call), never a
call per buyer, and never inside a database transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.callbacks import MenuCb, OrderCb
from core.clock import Moment, utcnow
from core.money import CENT, format_crypto, format_usd
from db import repo
from db.models import ApiKey, Order, OrderStatus, OutboxMessage, User
from locales import Phrase
from services.notify import Notifier
from services.openrouter import KeyInfo, OpenRouterClient
from services.quota import last_known

log = logging.getLogger(__name__)

# Percent-used thresholds, highest first: crossing 95 % straight from below 80 %
# announces only 95 %.
QUOTA_THRESHOLDS = (95, 80)
QUOTA_BUTTONS = [
    [
        ("menu.ai_tokens", MenuCb(action="tokens").pack()),
        ("menu.quota", MenuCb(action="quota").pack()),
    ]
]
# A daily job missed by less than this (a restart, a slow loop) still runs.
SUMMARY_GRACE = timedelta(hours=6)


def used_share(limit: Decimal | None, usage: Decimal) -> Decimal | None:
    """usage / limit, or None for a key without a positive limit (nothing to run out of)."""
    if limit is None or limit <= 0:
        return None
    return usage / limit


def alert_level(share: Decimal | None) -> int:
    """The highest threshold (percent) the share has reached, 0 below all of them."""
    if share is None:
        return 0
    percent = share * 100
    return next((level for level in QUOTA_THRESHOLDS if percent >= level), 0)


@dataclass(frozen=True)
class SweepResult:
    keys_seen: int  # keys OpenRouter listed
    matched: int  # of them, buyers' keys we know
    alerts: int  # thresholds newly crossed (alert queued when the buyer wants it)
    rearmed: int  # thresholds re-armed by a top-up


class BuyerAlerts:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        openrouter: OpenRouterClient,
        notifier: Notifier,
        *,
        reminder_before: timedelta,
        timezone: str = "UTC",
    ) -> None:
        self.sessions = sessions
        self.openrouter = openrouter
        self.notifier = notifier
        self.reminder_before = reminder_before
        self.zone = ZoneInfo(timezone)

    # --------------------------------------------------------------- reminders
    async def run_reminders(self) -> int:
        """Remind buyers whose unpaid invoice expires within ``reminder_before``; once per
        order. Returns how many reminders were queued."""
        now = utcnow()
        async with self.sessions() as session:
            due = (
                (
                    await session.execute(
                        select(Order.id)
                        .join(User, User.id == Order.user_id)
                        .where(
                            Order.status == OrderStatus.AWAITING_PAYMENT.value,
                            Order.reminder_sent.is_(False),
                            Order.expires_at > now,
                            Order.expires_at <= now + self.reminder_before,
                            # Buyers who turned reminders off are skipped, not marked: turning
                            # them back on in time still brings this order's reminder.
                            User.notify_reminders.is_(True),
                            User.reachable.is_(True),
                        )
                        .order_by(Order.id)
                    )
                )
                .scalars()
                .all()
            )
        sent = 0
        for order_id in due:
            async with self.sessions() as session, session.begin():
                if await self._remind(session, order_id, now):
                    sent += 1
        return sent

    async def _remind(self, session: AsyncSession, order_id: int, now: datetime) -> bool:
        claimed = await session.execute(
            update(Order)
            .where(
                Order.id == order_id,
                Order.status == OrderStatus.AWAITING_PAYMENT.value,
                Order.reminder_sent.is_(False),
            )
            .values(reminder_sent=True)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return False  # another run (or a payment) got there first
        order = await session.get(Order, order_id)
        assert order is not None and order.expires_at is not None
        assert order.crypto_amount is not None and order.pay_address is not None
        # Paid on the provider's page (Crypto Pay): no amount or address to send to.
        by_link = order.pay_address.startswith("https://")
        minutes_left = max(1, int((order.expires_at - now).total_seconds() // 60))
        repo.add_event(
            session,
            order_id,
            "reminder_sent",
            actor="job:reminders",
            detail={"minutes_left": minutes_left},
            status=order.status,
        )
        await self.notifier.user(
            session,
            order.user_id,
            "alerts.reminder_link" if by_link else "alerts.reminder",
            dedupe=f"reminder:{order_id}",
            buttons=[[("pay.check", OrderCb(action="check", order_id=order_id).pack())]],
            order_id=order_id,
            minutes=Phrase("alerts.minutes_left", count=minutes_left),
            amount=format_crypto(order.crypto_amount, order.asset),
            asset=order.asset,
            network=order.network or order.asset,
            address=order.pay_address,
            total=format_usd(order.total_usd),
            expires=self._local(order.expires_at),
        )
        log.info("reminder_queued order=%s user=%s", order_id, order.user_id)
        return True

    # ------------------------------------------------------------- quota sweep
    async def run_quota_sweep(self) -> SweepResult:
        """Refresh the buyers' cached key figures and announce newly crossed thresholds.

        Page by page: each page of ``GET /keys`` is written (figures, threshold moves,
        alerts) in one transaction, closed before the next page is asked for, so memory
        holds one page whatever the number of keys (holding all 100,000 keys raised the
        bot's RSS by ~375 MiB, one page at a time by ~19 MiB; bench/hotspots.md). A
        failure mid-way leaves the pages before it written whole and the rest untouched;
        the next sweep redoes every page, and the compare-and-set and the dedupe keys
        keep each alert single. Our keys that OpenRouter no longer lists are left as they are."""
        total = SweepResult(0, 0, 0, 0)
        async for page in self.openrouter.iter_key_pages():
            done = await self._sweep_page({info.hash: info for info in page}, utcnow())
            total = SweepResult(
                total.keys_seen + len(page),
                total.matched + done.matched,
                total.alerts + done.alerts,
                total.rearmed + done.rearmed,
            )
        return total

    async def _sweep_page(self, keys: dict[str, KeyInfo], now: datetime) -> SweepResult:
        """One page's keys: a transaction of at most 100 figure updates and threshold
        moves (each move a compare-and-set), rolled back whole on failure."""
        alerts = rearmed = 0
        async with self.sessions() as session, session.begin():
            rows = (
                await session.execute(
                    select(
                        ApiKey.id,
                        ApiKey.user_id,
                        ApiKey.openrouter_hash,
                        User.quota_alert_level,
                        User.notify_quota,
                        User.language,
                    )
                    .join(User, User.id == ApiKey.user_id)
                    .where(ApiKey.openrouter_hash.in_(list(keys)))
                )
            ).all()
            if not rows:
                return SweepResult(len(keys), 0, 0, 0)
            await session.execute(
                update(ApiKey),
                [{"id": row.id, **last_known(keys[row.openrouter_hash], now)} for row in rows],
            )
            for row in rows:
                info = keys[row.openrouter_hash]
                share = used_share(info.limit, info.usage)
                level = alert_level(share)
                if level == row.quota_alert_level:
                    continue
                moved = await session.execute(
                    update(User)
                    .where(
                        User.id == row.user_id,
                        User.quota_alert_level == row.quota_alert_level,
                    )
                    .values(quota_alert_level=level)
                    .execution_options(synchronize_session=False)
                )
                if moved.rowcount != 1:  # type: ignore[attr-defined]
                    continue  # a concurrent sweep already moved it
                if level < row.quota_alert_level:
                    # A top-up lowered the share: re-arm quietly.
                    rearmed += 1
                    log.info(
                        "quota_alert_rearmed user=%s from=%s to=%s",
                        row.user_id,
                        row.quota_alert_level,
                        level,
                    )
                    continue
                alerts += 1
                # Crossed while alerts were off: the level still moves, so turning
                # alerts on later does not bring an old crossing back.
                if row.notify_quota and share is not None and info.limit is not None:
                    await self._quota_alert(
                        session, row.user_id, level, share, info, language=row.language
                    )
        return SweepResult(len(keys), len(rows), alerts, rearmed)

    async def _quota_alert(
        self,
        session: AsyncSession,
        user_id: int,
        level: int,
        share: Decimal,
        info: KeyInfo,
        *,
        language: str | None = None,
    ) -> None:
        assert info.limit is not None
        remaining = max(Decimal(0), info.limit - info.usage)
        await self.notifier.user(
            session,
            user_id,
            f"alerts.quota_{level}",
            dedupe=f"quota:{user_id}:{level}:{info.limit.quantize(CENT)}",
            buttons=QUOTA_BUTTONS,
            # Read with the sweep's rows: one query fewer per alert (docs/performance.md).
            language=language,
            percent=str((share * 100).quantize(Decimal(1), rounding=ROUND_DOWN)),
            used=format_usd(info.usage),
            limit=format_usd(info.limit),
            remaining=format_usd(remaining),
        )
        log.info("quota_alert_queued user=%s level=%s", user_id, level)

    # ----------------------------------------------------------- daily summary
    async def run_daily_summary(self, now: datetime | None = None) -> int:
        """Usage today and what remains, for buyers who turned the summary on; at most
        one per buyer per local day. Returns how many summaries were queued.

        Page by page like the quota sweep (one page of keys in memory, not all of
        them), and only when someone asked: no call to OpenRouter otherwise."""
        now = now or utcnow()
        local_date = now.astimezone(self.zone).date().isoformat()
        async with self.sessions() as session:
            anyone = (
                await session.execute(
                    select(User.id)
                    .join(ApiKey, ApiKey.user_id == User.id)
                    .where(User.daily_summary.is_(True), User.reachable.is_(True))
                    .limit(1)
                )
            ).first()
        if anyone is None:
            return 0
        queued = 0
        async for page in self.openrouter.iter_key_pages():
            queued += await self._summaries_for_page({info.hash: info for info in page}, local_date)
        return queued

    async def _summaries_for_page(self, keys: dict[str, KeyInfo], local_date: str) -> int:
        queued = 0
        async with self.sessions() as session, session.begin():
            wanted = (
                await session.execute(
                    select(User.id, ApiKey.openrouter_hash)
                    .join(ApiKey, ApiKey.user_id == User.id)
                    .where(
                        User.daily_summary.is_(True),
                        User.reachable.is_(True),
                        ApiKey.openrouter_hash.in_(list(keys)),
                    )
                    .order_by(User.id)
                )
            ).all()
            for user_id, key_hash in wanted:
                info = keys[key_hash]
                dedupe = f"summary:{user_id}:{local_date}"
                if await _queued(session, dedupe):
                    continue
                limit = info.limit or Decimal(0)
                await self.notifier.user(
                    session,
                    user_id,
                    "alerts.daily_summary",
                    dedupe=dedupe,
                    buttons=QUOTA_BUTTONS,
                    date=local_date,
                    today=format_usd(info.usage_daily),
                    used=format_usd(info.usage),
                    limit=format_usd(limit),
                    remaining=format_usd(max(Decimal(0), limit - info.usage)),
                )
                queued += 1
        return queued

    def _local(self, moment: datetime) -> Moment:
        # In the operator's TIMEZONE, written in the buyer's language by the translator.
        return Moment(moment, self.zone)


async def _queued(session: AsyncSession, dedupe: str) -> bool:
    """Whether a message with this dedupe key exists (the insert's ON CONFLICT is the
    real guard; this only keeps the count honest)."""
    found = await session.execute(
        select(OutboxMessage.id).where(OutboxMessage.dedupe_key == dedupe)
    )
    return found.first() is not None
