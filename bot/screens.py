"""Texts of the bot's screens, rendered from service DTOs in the buyer's language."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from core.clock import format_utc, utcnow
from core.money import format_crypto, format_tokens, format_usd
from locales import Markup, Phrase, Translator
from processing.payments import PaymentCheck
from services.chat import ChatAnswer, ModelChatStats, Outcome
from services.orders import OrderView, QuoteView
from services.pricing import Bounds, ModelPrice
from services.quota import QuotaView, progress_bar


def when(moment: datetime | None) -> str:
    return format_utc(moment)


def packages(t: Translator, model: ModelPrice, bounds: Bounds | None) -> str:
    text = t("buy.packages", model=model.name)
    if bounds is not None:
        text += "\n\n" + t(
            "buy.range",
            min_tokens=format_tokens(bounds.min_tokens),
            max_tokens=Phrase("unit.tokens", count=bounds.max_tokens),
            min_total=format_usd(bounds.min_total),
            max_total=format_usd(bounds.max_total),
        )
    return text


def custom_prompt(t: Translator, bounds: Bounds | None) -> str:
    if bounds is None:
        return t("buy.custom_prompt_plain")
    return t(
        "buy.custom_prompt",
        min_tokens=format_tokens(bounds.min_tokens),
        max_tokens=format_tokens(bounds.max_tokens),
    )


def quote(t: Translator, q: QuoteView, markup_percent: str) -> str:
    approx = (
        t("quote.approx", amount=format_crypto(q.approx_crypto, q.asset), asset=q.asset)
        if q.approx_crypto is not None
        else ""
    )
    return t(
        "quote.text",
        model=q.model_name,
        tokens=format_tokens(q.tokens),
        base=format_usd(q.base_usd),
        markup_percent=markup_percent,
        markup=format_usd(q.markup_usd),
        total=format_usd(q.total_usd),
        approx=approx,
        valid_until=when(q.expires_at),
    )


def payment(t: Translator, order: OrderView) -> str:
    if order.pay_url is not None:
        return t(
            "pay.text_link",
            order_id=order.id,
            asset=order.asset,
            total=format_usd(order.total_usd),
            expires=when(order.expires_at),
        )
    assert order.crypto_amount is not None and order.address is not None
    return t(
        "pay.text",
        order_id=order.id,
        amount=format_crypto(order.crypto_amount, order.asset),
        asset=order.asset,
        network=order.network or "",
        address=order.address,
        total=format_usd(order.total_usd),
        expires=when(order.expires_at),
    )


def payment_check(t: Translator, check: PaymentCheck) -> str:
    """🔄 Check payment's answer (an alert: at most 200 characters)."""
    if check.partial is None:
        return t(f"pay.status.{check.status.value}")
    params = check.partial.params()
    if "received" in params:
        return t("pay.status.partial", **params)
    return t("pay.status.partial_unreported", **params)


def qr_payload(order: OrderView) -> str:
    assert order.address is not None and order.crypto_amount is not None
    if order.asset == "BTC":
        return f"bitcoin:{order.address}?amount={format_crypto(order.crypto_amount, 'BTC')}"
    return order.address


def order_line(t: Translator, order: OrderView) -> str:
    return t(
        "orders.line",
        order_id=order.id,
        tokens=Phrase("unit.tokens", count=order.tokens),
        model=order.model,
        total=format_usd(order.total_usd),
        status=t(f"status.{order.status.value}"),
        date=when(order.created_at),
    )


def orders(t: Translator, items: list[OrderView]) -> str:
    if not items:
        return t("orders.empty")
    return t("orders.title") + "\n\n" + Markup("\n").join(order_line(t, o) for o in items)


def quota(t: Translator, q: QuotaView) -> str:
    tokens = (
        t("quota.tokens", tokens=Phrase("unit.tokens", count=q.remaining_tokens), model=q.model)
        if q.remaining_tokens is not None
        else ""
    )
    runway = q.runway_days
    return t(
        "quota.text",
        bar=progress_bar(q.used_share),
        percent=f"{(q.used_share * 100).quantize(1)}",
        limit=format_usd(q.limit),
        used=format_usd(q.used),
        remaining=format_usd(q.remaining),
        tokens=tokens,
        daily=format_usd(q.usage_daily),
        weekly=format_usd(q.usage_weekly),
        monthly=format_usd(q.usage_monthly),
        runway=t("quota.no_usage")
        if runway is None
        else t("quota.runway", days=Phrase("unit.days", count=runway)),
        stale=t("quota.stale", age=age(t, utcnow() - q.as_of)) if q.stale else "",
    )


def age(t: Translator, delta: timedelta) -> str:
    minutes = max(1, int(delta.total_seconds() // 60))
    if minutes < 120:
        return t("quota.minutes", count=minutes)
    return t("quota.hours", count=minutes // 60)


def chat_cost(amount: Decimal) -> str:
    """An answer's cost: cents hide it (answers cost fractions of a cent), so up to six
    places, as OpenRouter reports it."""
    if amount >= Decimal("0.01"):
        return format_usd(amount)
    return f"${amount.quantize(Decimal('0.000001')).normalize():f}"


def chat_footer(t: Translator, answer: ChatAnswer) -> str:
    cost = chat_cost(answer.cost) if answer.cost is not None else t.plain("chat.cost_unknown")
    left = (
        format_usd(answer.credit_left)
        if answer.credit_left is not None
        else t.plain("chat.left_unknown")
    )
    footer = Markup("<i>{}</i>").format(t("chat.footer", cost=cost, left=left))
    note = {
        Outcome.STOPPED: "chat.stopped",
        Outcome.TIMEOUT: "chat.timeout",
        Outcome.FAILED: "chat.failed",
    }.get(answer.outcome)
    return f"{footer}\n{t(note)}" if note else str(footer)


def chat_stats(t: Translator, rows: list[ModelChatStats]) -> str:
    if not rows:
        return t("chat.stats_none")
    lines = [t("chat.stats_title")]
    lines += [
        t(
            "chat.stats_line",
            model=row.model,
            answers=format_tokens(row.answers),
            tokens=format_tokens(row.tokens),
            cost=chat_cost(row.cost),
        )
        for row in rows
    ]
    return "\n".join(lines)
