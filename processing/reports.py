"""The operator's tools that talk to OpenRouter and the providers: balance, /retry's kick,
reconciliation, and the daily/weekly admin reports (SPEC §6).

Every report is written to the outbox under a dedupe key naming its period
(``daily-report:2024-05-01``, ``weekly-report:2024-W18``), so a double run, a second
process or a catch-up after downtime sends it once. No DB transaction is open during an
HTTP call: read (close) → call out → write (commit).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from core.money import format_crypto, format_tokens, format_usd
from db import repo
from db.models import ApiKey, Order, OrderStatus, OutboxMessage
from locales import Translator, translator
from processing.fulfilment import KEY_NAME_PREFIX, BuyerBusy, Fulfilment, FundsRecheck, LeaseLost
from processing.payment_notices import partial_view
from processing.payments import SETTLED
from services.admin import (
    ActionOutcome,
    ActionResult,
    AdminService,
    OrderView,
    Period,
    Stats,
    days_period,
)
from services.errors import ExternalError, OpenRouterError
from services.notify import Notifier
from services.openrouter import OpenRouterClient
from services.payments.base import PaymentProvider

log = logging.getLogger(__name__)

RECONCILE_WINDOW = timedelta(days=7)
# A run missed while the loop was busy or the machine slept still happens once.
REPORT_MISFIRE_GRACE = 6 * 3600
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# The provider took the money for these; for the others it must not have.
UNPAID_STATES = {
    OrderStatus.NEW.value,
    OrderStatus.AWAITING_PAYMENT.value,
    OrderStatus.EXPIRED.value,
    OrderStatus.CANCELLED.value,
}
PAID_STATES = {
    OrderStatus.PAID.value,
    OrderStatus.FULFILLING.value,
    OrderStatus.AWAITING_FUNDS.value,
    OrderStatus.DELIVERED.value,
    OrderStatus.FAILED.value,
}


@dataclass(frozen=True)
class Balance:
    available: Decimal  # total_credits - total_usage
    committed: Decimal  # Σ limit_remaining of buyer keys
    keys: int  # buyer keys at OpenRouter

    @property
    def headroom(self) -> Decimal:
        return self.available - self.committed


@dataclass(frozen=True)
class Mismatch:
    kind: str  # provider_paid | provider_unpaid | key_limit | key_missing | key_unknown
    ref: str  # order or user id: what the dedupe key is about
    params: dict[str, Any]


@dataclass
class Reconciliation:
    orders_checked: int = 0
    keys_checked: int = 0
    unchecked: list[str] = field(default_factory=list)  # provider errors, not mismatches
    mismatches: list[Mismatch] = field(default_factory=list)


class AdminOps:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        admin: AdminService,
        fulfilment: Fulfilment,
        openrouter: OpenRouterClient,
        providers: dict[str, PaymentProvider],
        notifier: Notifier,
        *,
        timezone: str = "UTC",
        report_time: str = "09:00",
        weekly_day: str = "mon",
    ) -> None:
        self.sessions = sessions
        self.admin = admin
        self.fulfilment = fulfilment
        self.openrouter = openrouter
        self.providers = providers
        self.notifier = notifier
        self.timezone = timezone
        self.zone = ZoneInfo(timezone)
        hours, _, minutes = report_time.partition(":")
        self.report_hour, self.report_minute = int(hours), int(minutes)
        self.weekly_day = weekly_day

    # ------------------------------------------------------------- commands
    async def balance(self) -> Balance:
        funds = await self.fulfilment.funds()
        keys = 0
        async for key in self.openrouter.iter_keys():
            if key.name.startswith(KEY_NAME_PREFIX) and not key.disabled:
                keys += 1
        return Balance(funds.available, funds.committed, keys)

    async def recheck_funds(self) -> FundsRecheck:
        """`🔄 Re-check balance`: measure now and resume the orders waiting for funds."""
        return await self.fulfilment.resume_waiting()

    async def retry(self, order_id: int, admin_id: int) -> tuple[ActionResult, str | None]:
        """Back to `paid`, then fulfil now; returns the result and the status after."""
        result = await self.admin.retry(order_id, admin_id)
        if result.outcome is not ActionOutcome.DONE or result.user_id is None:
            return result, None
        try:
            await self.fulfilment.fulfil_user(result.user_id)
        except Exception:  # the fulfilment job picks it up again; the admin sees the status
            log.exception("admin_retry_fulfil_failed order=%s", order_id)
        async with self.sessions() as session:
            status = (
                await session.execute(select(Order.status).where(Order.id == order_id))
            ).scalar_one()
        return result, status

    async def refund(self, order_id: int, admin_id: int, note: str) -> ActionResult:
        """/refund: take the order's credit off the buyer's key, confirmed, then record.

        A PATCH for this order may have landed with its answer lost, so the key is set
        to the ledger without the order and read back first, under the buyer's lease
        (so no delivery PATCHes in between). If OpenRouter does not confirm it, nothing
        is recorded and the admin is told why.
        """
        check = await self.admin.refundable(order_id)
        if check.outcome is not ActionOutcome.DONE or check.user_id is None:
            return check
        user_id = check.user_id
        try:
            async with self.fulfilment.buyer_lease(user_id) as token:
                limit = await self.fulfilment.reassert_ledger(user_id, token)

                async def fence(session: AsyncSession) -> None:
                    await self.fulfilment.renew(session, user_id, token)

                return await self.admin.refund(
                    order_id, admin_id, note, fence=fence, key_limit=limit
                )
        except (BuyerBusy, LeaseLost):
            return ActionResult(ActionOutcome.BUYER_BUSY, check.status, user_id)
        except OpenRouterError as exc:
            log.warning("refund_refused order=%s error=%s", order_id, exc)
            return ActionResult(ActionOutcome.OPENROUTER_DOWN, check.status, user_id, str(exc))

    # ------------------------------------------------------------ reconcile
    async def reconcile(self, *, alert: bool = True) -> Reconciliation:
        """Our ledger vs the providers (payments) and OpenRouter (key limits)."""
        report = Reconciliation()
        since = utcnow() - RECONCILE_WINDOW
        async with self.sessions() as session:
            orders = (
                await session.execute(
                    select(
                        Order.id,
                        Order.user_id,
                        Order.status,
                        Order.provider,
                        Order.provider_payment_id,
                        Order.provider_hash,
                        Order.total_usd,
                    )
                    .where(Order.created_at >= since, Order.provider_payment_id.is_not(None))
                    .order_by(Order.id)
                )
            ).all()
            keys = list((await session.execute(select(ApiKey).order_by(ApiKey.user_id))).scalars())
            ledger = {k.user_id: await repo.delivered_base_sum(session, k.user_id) for k in keys}
        # (a) payments, asked with the session closed.
        limit = asyncio.Semaphore(5)

        async def check(row: Any) -> None:
            provider = self.providers.get(row.provider or "")
            if provider is None or not row.provider_hash:
                return
            async with limit:
                try:
                    status = await provider.fetch_status(row.provider_payment_id, row.provider_hash)
                except ExternalError as exc:
                    report.unchecked.append(f"#{row.id}: {exc}")
                    return
            report.orders_checked += 1
            params = {
                "order_id": row.id,
                "user_id": row.user_id,
                "status": row.status,
                "provider": row.provider,
                "total": format_usd(row.total_usd),
            }
            if status.is_paid and row.status in UNPAID_STATES:
                report.mismatches.append(Mismatch("provider_paid", str(row.id), params))
            elif not status.is_paid and row.status in PAID_STATES:
                report.mismatches.append(Mismatch("provider_unpaid", str(row.id), params))

        await asyncio.gather(*(check(row) for row in orders))
        report.mismatches.sort(key=lambda m: int(m.ref))
        # (b) key limits vs Σ base of delivered orders.
        remote = {key.hash: key async for key in self.openrouter.iter_keys()}
        known = set()
        for key_row in keys:
            known.add(key_row.openrouter_hash)
            expected = ledger[key_row.user_id]
            info = remote.get(key_row.openrouter_hash)
            report.keys_checked += 1
            params = {"user_id": key_row.user_id, "ledger": format_usd(expected)}
            if info is None:
                report.mismatches.append(Mismatch("key_missing", str(key_row.user_id), params))
            elif (info.limit or Decimal(0)) != expected:
                params["limit"] = format_usd(info.limit or Decimal(0))
                report.mismatches.append(Mismatch("key_limit", str(key_row.user_id), params))
        for info in remote.values():
            if (
                info.hash not in known
                and info.name.startswith(KEY_NAME_PREFIX)
                and (info.limit or 0) > 0
            ):
                report.mismatches.append(
                    Mismatch(
                        "key_unknown",
                        info.hash,
                        {
                            "name": info.name,
                            "hash": info.hash[:12],
                            "limit": format_usd(info.limit or Decimal(0)),
                        },
                    )
                )
        if alert and report.mismatches:
            t = translator(self.notifier.admin_language)
            async with self.sessions() as session, session.begin():
                for mismatch in report.mismatches:
                    # The figures are in the key: the same mismatch alerts once, a
                    # changed one alerts again.
                    figures = ":".join(
                        str(mismatch.params.get(k, "")) for k in ("status", "limit", "ledger")
                    )
                    await self.notifier.admin(
                        session,
                        "admin_report.reconcile_alert",
                        dedupe=f"reconcile:{mismatch.kind}:{mismatch.ref}:{figures}"[:128],
                        detail=render_mismatch(t, mismatch),
                    )
        log.info(
            "reconciled orders=%s keys=%s mismatches=%s unchecked=%s",
            report.orders_checked,
            report.keys_checked,
            len(report.mismatches),
            len(report.unchecked),
        )
        return report

    # -------------------------------------------------------------- reports
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

    def install(self, scheduler: AsyncIOScheduler) -> None:
        """Cron jobs in TIMEZONE; coalesced, with a grace window for late runs."""
        common: dict[str, Any] = {
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": REPORT_MISFIRE_GRACE,
            "replace_existing": True,
        }
        scheduler.add_job(
            _logged("daily_report", self.run_daily_due),
            CronTrigger(hour=self.report_hour, minute=self.report_minute, timezone=self.zone),
            id="daily_report",
            name="daily_report",
            **common,
        )
        scheduler.add_job(
            _logged("weekly_report", self.run_weekly_due),
            CronTrigger(
                day_of_week=self.weekly_day,
                hour=self.report_hour,
                minute=self.report_minute,
                timezone=self.zone,
            ),
            id="weekly_report",
            name="weekly_report",
            **common,
        )
        scheduler.add_job(
            _logged("report_catch_up", self.catch_up),
            "date",
            id="report_catch_up",
            name="report_catch_up",
            run_date=utcnow(),
            **common,
        )

    async def _report(self, dedupe: str, title_key: str, period: Period, **title: Any) -> bool:
        async with self.sessions() as session:
            if await _has_any(session, dedupe):
                return False  # sent already: no need to ask OpenRouter again
        stats = await self.admin.stats(period)
        t = translator(self.notifier.admin_language)
        try:
            balance_text = render_balance(t, await self.balance())
        except ExternalError as exc:
            balance_text = t("admin_report.balance_unavailable", error=str(exc))
        text = "\n\n".join(
            [
                t(
                    title_key,
                    first=period.first_day.isoformat(),
                    last=period.last_day.isoformat(),
                    tz=self.timezone,
                    **title,
                ),
                render_stats_lines(t, stats),
                balance_text,
            ]
        )
        async with self.sessions() as session, session.begin():
            if self.notifier.admin_chat_id is None:
                return False
            await repo.add_outbox(
                session, chat_id=self.notifier.admin_chat_id, text=text, dedupe_key=dedupe
            )
        log.info("report_queued key=%s", dedupe)
        return True


async def _has_any(session: AsyncSession, pattern: str) -> bool:
    column = OutboxMessage.dedupe_key
    condition = column.like(pattern) if "%" in pattern else column == pattern
    return (
        await session.execute(select(OutboxMessage.id).where(condition).limit(1))
    ).first() is not None


def _logged(name: str, job: Any) -> Any:
    async def run() -> None:
        try:
            await job()
        except Exception:
            log.exception("job_failed job=%s", name)

    return run


# ---------------------------------------------------------------- rendering
def render_stats_lines(t: Translator, stats: Stats) -> str:
    return t(
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


def render_stats(t: Translator, stats: Stats, timezone: str) -> str:
    title = t(
        "admin_cmd.stats_title",
        first=stats.period.first_day.isoformat(),
        last=stats.period.last_day.isoformat(),
        tz=timezone,
    )
    return f"{title}\n\n{render_stats_lines(t, stats)}"


def render_balance(t: Translator, balance: Balance) -> str:
    return t(
        "admin_report.balance",
        available=format_usd(balance.available),
        committed=format_usd(balance.committed),
        headroom=format_usd(balance.headroom),
        keys=balance.keys,
    )


def render_recheck(t: Translator, result: FundsRecheck) -> str:
    funds = result.funds
    return t(
        "admin_cmd.recheck_done",
        available=format_usd(funds.available),
        committed=format_usd(funds.committed),
        headroom=format_usd(funds.headroom),
        delivered=result.delivered,
        waiting=result.waiting,
    )


def render_mismatch(t: Translator, mismatch: Mismatch) -> str:
    return t(f"admin_report.mismatch.{mismatch.kind}", **mismatch.params)


def render_reconciliation(t: Translator, report: Reconciliation) -> str:
    lines: list[str] = [
        t(
            "admin_cmd.reconcile_title",
            orders=report.orders_checked,
            keys=report.keys_checked,
        )
    ]
    if report.mismatches:
        lines += [f"• {render_mismatch(t, m)}" for m in report.mismatches]
    else:
        lines.append(t("admin_cmd.reconcile_clean"))
    if report.unchecked:
        lines.append(t("admin_cmd.reconcile_unchecked", items="; ".join(report.unchecked)))
    return "\n".join(lines)


def render_order(t: Translator, view: OrderView, timezone: str) -> str:
    order, user = view.order, view.user
    zone = ZoneInfo(timezone)
    who = str(order.user_id)
    if user is not None and user.username:
        who += f" @{user.username}"
    elif user is not None and user.first_name:
        who += f" ({user.first_name})"
    crypto = (
        f"{format_crypto(order.crypto_amount, order.asset)} {order.crypto_code or order.asset}"
        if order.crypto_amount is not None
        else "—"
    )
    lines = [
        t(
            "admin_cmd.order",
            order_id=order.id,
            status=order.status,
            user=who,
            model=order.model,
            tokens=format_tokens(order.tokens),
            base=format_usd(order.base_usd),
            markup=format_usd(order.markup_usd),
            total=format_usd(order.total_usd),
            crypto=crypto,
            provider=order.provider or "—",
            payment_id=order.provider_payment_id or "—",
            payment_hash=order.provider_hash or "—",
            attempts=order.attempts,
        )
    ]
    if order.last_error:
        lines.append(t("admin_cmd.order_error", error=order.last_error[:300]))
    if order.refund_note:
        lines.append(t("admin_cmd.order_refund_note", note=order.refund_note))
    # Once the payment counted, "part arrived" is history (the timeline keeps it).
    settled = OrderStatus(order.status) in SETTLED
    partial = None if settled else partial_view(order, view.received)
    if partial is not None and partial.received is not None:
        lines.append(t("admin_cmd.order_received", **partial.params()))
    elif partial is not None:
        lines.append(t("admin_cmd.order_partial_unreported"))
    if order.attention:
        reason = t(f"admin_cmd.attention_{order.attention}")
        lines.append(t("admin_cmd.order_attention", reason=reason))
    lines.append(t("admin_cmd.timeline"))
    for event in view.events:
        moved = (
            f"{event.from_status or '∅'} → {event.to_status or '∅'}"
            if event.from_status != event.to_status
            else (event.to_status or "")
        )
        lines.append(
            t(
                "admin_cmd.event",
                at=event.at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"),
                kind=event.kind,
                moved=moved,
                actor=event.actor,
            )
        )
    return "\n".join(lines)
