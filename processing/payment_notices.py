"""What the bot says about money it did not simply expect (issue 9 §2, §3).

A partial transfer, a transfer after the order closed, more than the invoice: each is
an order event, one message to the buyer and, when the operator must act, one admin
alert naming the crypto received and a flag on the order (``orders.attention``; its
status is left alone). Exactly once per distinct payment state: the confirm path
decides that by compare-and-set on the rows (``payments.is_paid`` false → true,
``payments.received_amount`` rising, ``orders.partial_seen`` false → true), so the
provider's repeated callbacks and the poll seeing the same state add nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from core.clock import format_utc
from core.jsonutil import jsonable
from core.money import format_crypto
from db import repo
from db.models import Order, OrderStatus
from db.status import OPEN
from services.notify import Notifier
from services.payments.base import PaymentStatus


@dataclass(frozen=True)
class PartialView:
    """Part of an invoice arrived. ``received`` is None when the provider does not say
    how much (its payment object only flips "paid"), and then neither can we."""

    amount: Decimal
    received: Decimal | None
    asset: str
    deadline: datetime | None

    @property
    def missing(self) -> Decimal | None:
        if self.received is None:
            return None
        return max(self.amount - self.received, Decimal(0))

    def params(self) -> dict[str, Any]:
        params = {
            "amount": format_crypto(self.amount, self.asset),
            "asset": self.asset,
            "deadline": format_utc(self.deadline),
        }
        if self.received is not None and self.missing is not None:
            params["received"] = format_crypto(self.received, self.asset)
            params["missing"] = format_crypto(self.missing, self.asset)
        return params


def partial_view(order: Order, received: Decimal | None) -> PartialView | None:
    """The partial payment of an unpaid order, if one was seen."""
    if not order.partial_seen or order.crypto_amount is None:
        return None
    return PartialView(order.crypto_amount, received, order.asset, order.expires_at)


def _state(received: Decimal | None) -> str:
    return "seen" if received is None else str(received)


async def _flag(session: AsyncSession, order_id: int, reason: str) -> None:
    await session.execute(update(Order).where(Order.id == order_id).values(attention=reason))


async def _unexpected(
    session: AsyncSession,
    notifier: Notifier,
    order: Order,
    situation: str,
    *,
    source: str,
    status: str,
    detail: dict[str, Any],
    admin_dedupe: str,
    admin_params: dict[str, Any],
    user_dedupe: str,
    crypto: str,
) -> None:
    """Money the order could not simply take: a ``payment_unexpected`` event, the order
    flagged with ``situation``, the ``admin.<situation>`` alert and the buyer's notice."""
    repo.add_event(
        session,
        order.id,
        "payment_unexpected",
        actor=source,
        status=status,
        detail=jsonable({"situation": situation, **detail}),
    )
    await _flag(session, order.id, situation)
    await notifier.admin(
        session,
        f"admin.{situation}",
        dedupe=admin_dedupe,
        order_id=order.id,
        user_id=order.user_id,
        status=status,
        **admin_params,
    )
    await notifier.user(
        session,
        order.user_id,
        "notify.payment_unexpected",
        dedupe=user_dedupe,
        order_id=order.id,
        crypto=crypto,
    )


async def partial(
    session: AsyncSession,
    notifier: Notifier,
    order: Order,
    status: PaymentStatus,
    current: OrderStatus,
    *,
    source: str,
) -> None:
    """A transfer that does not complete the invoice; ``current``: the order's status as
    of the write that recorded it."""
    # The report's amount: the confirm path checked it equals what the order stored.
    view = PartialView(status.crypto_amount, status.received_amount, order.asset, order.expires_at)
    # Still waiting for its money: a partial transfer is news for the buyer, not the operator.
    is_open = current in OPEN
    repo.add_event(
        session,
        order.id,
        "payment_partial",
        actor=source,
        status=current.value,
        detail=jsonable(
            {
                "received": view.received,
                "missing": view.missing,
                "after_close": not is_open,
                "payload": status.raw,
            }
        ),
    )
    state = _state(view.received)
    if is_open:
        await notifier.user(
            session,
            order.user_id,
            "notify.partial" if view.received is not None else "notify.partial_unreported",
            dedupe=f"partial:{order.id}:{state}",
            order_id=order.id,
            **view.params(),
        )
        return
    # Expired, cancelled or refunded: the operator settles it (a full late payment would
    # still be honoured for the first two, SPEC §3, and the buyer may be told so).
    await _flag(session, order.id, "partial_after_close")
    params = view.params()
    got = f"{params['received']} {order.asset}" if "received" in params else "?"
    await notifier.admin(
        session,
        "admin.partial_after_close",
        dedupe=f"late-partial:{order.id}:{state}",
        order_id=order.id,
        user_id=order.user_id,
        status=current.value,
        crypto=got,
        amount=f"{params['amount']} {order.asset}",
        provider=order.provider,
        payment_id=order.provider_payment_id,
        address=order.pay_address,
    )
    if view.received is None:
        await notifier.user(
            session,
            order.user_id,
            "notify.payment_unexpected_part",
            dedupe=f"unexpected:{order.id}:part:{state}",
            order_id=order.id,
        )
    else:
        await notifier.user(
            session,
            order.user_id,
            "notify.payment_unexpected",
            dedupe=f"unexpected:{order.id}:part:{state}",
            order_id=order.id,
            crypto=got,
        )


async def paid_after_close(
    session: AsyncSession,
    notifier: Notifier,
    order: Order,
    status: PaymentStatus,
    current: OrderStatus,
    *,
    source: str,
) -> None:
    """The invoice became fully paid while the order could no longer take a payment
    (``refunded``: the operator gave a partial payment back, then the buyer paid the
    rest). No credit is granted by itself: the operator already paid part of this money
    back once, so only they can settle what the buyer is owed."""
    await _unexpected(
        session,
        notifier,
        order,
        "paid_after_close",
        source=source,
        status=current.value,
        detail={"received": status.received_amount, "payload": status.raw},
        admin_dedupe=f"paid-after-close:{order.id}",
        admin_params={
            "crypto": f"{format_crypto(status.crypto_amount, order.asset)} {order.crypto_code}",
            "provider": status.provider,
            "payment_id": status.payment_id,
        },
        user_dedupe=f"unexpected:{order.id}:paid",
        crypto=f"{format_crypto(status.crypto_amount, order.asset)} {order.asset}",
    )


async def overpaid(
    session: AsyncSession,
    notifier: Notifier,
    order: Order,
    status: PaymentStatus,
    *,
    source: str,
) -> None:
    """More arrived than the invoice asked (a second payment, or too much at once)."""
    received = status.received_amount
    assert received is not None
    extra = received - status.crypto_amount
    await _unexpected(
        session,
        notifier,
        order,
        "overpaid",
        source=source,
        status=order.status,
        detail={"received": received, "extra": extra, "payload": status.raw},
        admin_dedupe=f"overpaid:{order.id}:{received}",
        admin_params={
            "received": format_crypto(received, order.asset),
            "amount": format_crypto(status.crypto_amount, order.asset),
            "extra": format_crypto(extra, order.asset),
            "asset": order.asset,
            "provider": status.provider,
            "payment_id": status.payment_id,
        },
        user_dedupe=f"unexpected:{order.id}:over:{received}",
        crypto=f"{format_crypto(extra, order.asset)} {order.asset}",
    )
