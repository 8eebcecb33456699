"""Texts of the admin's screens: the answers to /stats /order /balance /reconcile and the
re-check button, rendered from AdminOps' results in the admin's language.

Beside ``bot/screens.py`` (the buyer's). Messages the system sends by itself (reports,
alerts) are worded in ``processing/``; their shared parts are reused from there.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from bot.screens import chat_stats
from core.clock import format_utc
from core.money import format_crypto, format_usd
from db.models import OrderStatus
from db.status import SETTLED
from locales import Phrase, Translator
from processing.admin_ops import Balance, Reconciliation, mismatch_text
from processing.admin_reports import balance_text, stats_text
from processing.fulfilment import FundsRecheck
from processing.payment_notices import partial_view
from services.admin_ledger import OrderDossier, Stats
from services.payments.health import ProviderState


def render_stats(t: Translator, stats: Stats, timezone: str) -> str:
    title = t(
        "admin_cmd.stats_title",
        first=stats.period.first_day.isoformat(),
        last=stats.period.last_day.isoformat(),
        tz=timezone,
    )
    return f"{title}\n\n{stats_text(t, stats)}\n\n{chat_stats(t, list(stats.chat))}"


def render_balance(t: Translator, balance: Balance) -> str:
    return f"{t('admin_cmd.balance_title')}\n{balance_text(t, balance)}"


def render_providers(t: Translator, states: list[ProviderState]) -> str:
    lines = [t("admin_cmd.providers_title")]
    for state in states:
        if state.cooling_until is not None:
            lines.append(
                t(
                    "admin_cmd.provider_cooling",
                    name=state.name,
                    until=format_utc(state.cooling_until),
                    failures=state.failures,
                    error=state.last_error or "",
                )
            )
        elif state.failures:
            lines.append(
                t(
                    "admin_cmd.provider_failing",
                    name=state.name,
                    failures=state.failures,
                    error=state.last_error or "",
                )
            )
        else:
            lines.append(t("admin_cmd.provider_ok", name=state.name))
    return "\n".join(lines)


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


def render_reconciliation(t: Translator, report: Reconciliation) -> str:
    lines: list[str] = [
        t(
            "admin_cmd.reconcile_title",
            orders=Phrase("unit.payments", count=report.orders_checked),
            keys=Phrase("unit.keys", count=report.keys_checked),
        )
    ]
    if report.mismatches:
        lines += [f"• {mismatch_text(t, m)}" for m in report.mismatches]
    else:
        lines.append(t("admin_cmd.reconcile_clean"))
    if report.unchecked:
        lines.append(t("admin_cmd.reconcile_unchecked", items="; ".join(report.unchecked)))
    return "\n".join(lines)


def render_order(t: Translator, dossier: OrderDossier, timezone: str) -> str:
    order, user = dossier.order, dossier.user
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
            tokens=Phrase("unit.tokens", count=order.tokens),
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
    partial = None if settled else partial_view(order, dossier.received)
    if partial is not None and partial.received is not None:
        lines.append(t("admin_cmd.order_received", **partial.params()))
    elif partial is not None:
        lines.append(t("admin_cmd.order_partial_unreported"))
    if order.attention:
        reason = t(f"admin_cmd.attention_{order.attention}")
        lines.append(t("admin_cmd.order_attention", reason=reason))
    lines.append(t("admin_cmd.timeline"))
    for event in dossier.events:
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
