"""AITokenPaymentProcessor: the one idempotent confirm path (SPEC §3), polling and expiry.

Callbacks, the polling job, the expiry sweep and the buyer's "Check payment" all end in
``apply_status``. A payment counts only when the provider says it is fully paid and
its provider, id, hash, currency and fiat amount match what we stored. The order moves
by compare-and-set, so of any number of concurrent confirmations exactly one acts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import false, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from core.jsonutil import jsonable
from core.metrics import Metrics
from core.money import format_crypto, format_usd
from db import repo
from db.models import Order, OrderStatus, Payment
from db.status import CLOSED_UNPAID, OPEN, SETTLED, UNPAID
from locales import Phrase
from processing import payment_notices as notices
from services.errors import ExternalError, OrderNotFound
from services.logcontext import annotate, bind
from services.notify import Notifier
from services.orders import owned
from services.payments.base import PaymentProvider, PaymentStatus, order_reference

log = logging.getLogger(__name__)

LATE_POLL_WINDOW = timedelta(hours=24)
STALE_NEW_ORDER = timedelta(minutes=10)


class Outcome(StrEnum):
    UNKNOWN = "unknown"  # no such payment of ours: acknowledged and ignored
    MISMATCH = "mismatch"  # signed but not what we stored: never delivered
    PAID = "paid"  # this call moved the order to paid
    ALREADY = "already"  # paid earlier (duplicate, replay, race loser)
    PENDING = "pending"  # not (fully) paid yet
    NOTICED = "noticed"  # paid, but the order could not take it: the operator was told


@dataclass(frozen=True)
class ApplyResult:
    outcome: Outcome
    order_id: int | None = None
    user_id: int | None = None


@dataclass(frozen=True)
class PaymentCheck:
    """What 🔄 Check payment shows: the status, and the partial payment if one arrived."""

    status: OrderStatus
    partial: notices.PartialView | None = None


class AITokenPaymentProcessor:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        providers: dict[str, PaymentProvider],
        notifier: Notifier,
        *,
        on_paid: Callable[[int], Awaitable[None]] | None = None,
        poll_concurrency: int = 5,
        stale_new: timedelta = STALE_NEW_ORDER,
        check_every: timedelta = timedelta(seconds=10),
        metrics: Metrics | None = None,
    ) -> None:
        self.sessions = sessions
        self.metrics = metrics or Metrics()
        self.providers = providers
        self.notifier = notifier
        self.on_paid = on_paid
        self.stale_new = stale_new
        self.check_every = check_every
        self._poll_limit = asyncio.Semaphore(poll_concurrency)

    # --------------------------------------------------------------- confirm
    async def apply_status(self, status: PaymentStatus, *, source: str) -> ApplyResult:
        with bind():  # _apply annotates the order once it has found it
            result = await self._apply(status, source=source)
            if result.outcome is Outcome.PAID and self.on_paid and result.user_id is not None:
                await self.on_paid(result.user_id)
            return result

    async def _apply(self, status: PaymentStatus, *, source: str) -> ApplyResult:
        async with self.sessions() as session, session.begin():
            payment = (
                await session.execute(
                    select(Payment).where(
                        Payment.provider == status.provider,
                        Payment.provider_payment_id == status.payment_id,
                    )
                )
            ).scalar_one_or_none()
            if payment is None:
                log.info(
                    "payment_unknown provider=%s payment_id=%s source=%s",
                    status.provider,
                    status.payment_id,
                    source,
                )
                return ApplyResult(Outcome.UNKNOWN)
            order = await session.get(Order, payment.order_id)
            assert order is not None
            annotate(order_id=order.id, user_id=order.user_id)
            reason = _mismatch(status, payment, order)
            if reason:
                log.warning(
                    "payment_mismatch order=%s source=%s reason=%s", order.id, source, reason
                )
                repo.add_event(
                    session,
                    order.id,
                    "payment_mismatch",
                    actor=source,
                    status=order.status,
                    detail={"reason": reason, "payload": jsonable(status.raw)},
                )
                await self.notifier.admin(
                    session,
                    "admin.mismatch",
                    dedupe=f"mismatch:{order.id}:{reason}",
                    order_id=order.id,
                    provider=status.provider,
                    reason=reason,
                )
                return ApplyResult(Outcome.MISMATCH, order.id, order.user_id)

            was_paid = payment.is_paid
            await session.execute(
                update(Payment)
                .where(Payment.id == payment.id)
                .values(
                    updates=Payment.updates + 1,
                    last_payload=jsonable(status.raw),
                    updated_at=utcnow(),
                )
            )
            # Each compare-and-set below says whether this report is news; of any number
            # of deliveries of the same provider state, exactly one wins each.
            first_paid = status.is_paid and await _cas(
                session, Payment, payment.id, Payment.is_paid == false(), is_paid=True
            )
            received = status.received_amount
            # Set on the value read, not compared in SQL: SQLite keeps money as text.
            before = payment.received_amount
            grew = (
                received is not None
                and (before is None or received > before)
                and await _cas(
                    session,
                    Payment,
                    payment.id,
                    Payment.received_amount.is_(None)
                    if before is None
                    else Payment.received_amount == before,
                    received_amount=received,
                )
            )
            current = OrderStatus(order.status)
            if not status.is_paid:
                if was_paid or current in SETTLED:
                    # A stale "not paid" (replayed, reordered) after the payment counted:
                    # nothing arrived, nothing to say (issue 9 §6).
                    return ApplyResult(Outcome.ALREADY, order.id, order.user_id)
                if received is not None:
                    transfer = grew and received > 0
                    condition = None
                else:
                    # The documented object has no sum: the provider calls back on a
                    # transfer, so an unpaid *callback* means part of the amount arrived
                    # (SPEC §3: partial transfers are summed). A poll proves nothing.
                    transfer = source.startswith("callback")
                    condition = Order.partial_seen == false()
                # The status as of this write, not as read above: an expiry committed
                # in between makes this a partial payment on a closed order.
                marked = await _mark_partial(session, order.id, condition) if transfer else None
                if marked is not None:
                    now = OrderStatus(marked)
                    await notices.partial(session, self.notifier, order, status, now, source=source)
                return ApplyResult(Outcome.PENDING, order.id, order.user_id)

            over = grew and received is not None and received > status.crypto_amount
            # A closed order paid for the first time is told once below, with the total.
            if over and not (first_paid and current not in UNPAID):
                await notices.overpaid(session, self.notifier, order, status, source=source)
            if current not in UNPAID:
                if first_paid:
                    await notices.paid_after_close(
                        session, self.notifier, order, status, current, source=source
                    )
                    return ApplyResult(Outcome.NOTICED, order.id, order.user_id)
                return ApplyResult(Outcome.ALREADY, order.id, order.user_id)

            # A fiat-priced invoice learns its crypto amount only now (what was paid).
            paid_values: dict[str, Any] = (
                {"crypto_amount": status.crypto_amount} if status.fiat_priced else {}
            )
            previous = await repo.transition(
                session,
                order.id,
                UNPAID,
                OrderStatus.PAID,
                actor=source,
                kind="payment_confirmed",
                detail={
                    "provider": status.provider,
                    "payment_id": status.payment_id,
                    "hash": status.payment_hash,
                },
                paid_at=utcnow(),
                next_attempt_at=None,
                **paid_values,
            )
            if previous is None:
                # Lost the race. To another confirmation: nothing to say. To a close
                # (the admin's /refund as the money arrived): the first "paid" is news.
                now = OrderStatus(
                    (
                        await session.execute(select(Order.status).where(Order.id == order.id))
                    ).scalar_one()
                )
                if first_paid and now not in SETTLED:
                    await notices.paid_after_close(
                        session, self.notifier, order, status, now, source=source
                    )
                    return ApplyResult(Outcome.NOTICED, order.id, order.user_id)
                return ApplyResult(Outcome.ALREADY, order.id, order.user_id)
            late = previous in CLOSED_UNPAID
            await self.notifier.user(
                session,
                order.user_id,
                "notify.payment_received",
                dedupe=f"paid:{order.id}",
                order_id=order.id,
            )
            await self.notifier.admin(
                session,
                "admin.paid_late" if late else "admin.paid",
                dedupe=f"admin-paid:{order.id}",
                order_id=order.id,
                user_id=order.user_id,
                tokens=Phrase("unit.tokens", count=order.tokens),
                model=order.model,
                total=format_usd(order.total_usd),
                crypto=f"{format_crypto(status.crypto_amount, order.asset)} {order.crypto_code}",
                provider=status.provider,
                previous=previous.value,
            )
            log.info(
                "payment_confirmed order=%s user=%s source=%s late=%s",
                order.id,
                order.user_id,
                source,
                late,
            )
        # Counted once committed: a rolled-back confirmation confirmed nothing.
        self.metrics.confirmed(status.provider, source)
        return ApplyResult(Outcome.PAID, order.id, order.user_id)

    # ------------------------------------------------------------------ poll
    async def check_order(self, user_id: int, order_id: int) -> PaymentCheck:
        """The buyer's "Check payment": ask the provider (at most once per order per
        ``check_every``, however many taps arrive at once), then report what we know."""
        async with self.sessions() as session, session.begin():
            order = await owned(session, Order, order_id, user_id, OrderNotFound)
            ref = (order.provider, order.provider_payment_id, order.provider_hash)
            now = utcnow()
            # A compare-and-set on the row, not a lock in memory: concurrent taps and
            # other replicas see the same claim; the losers answer from the database.
            ask = (
                all(ref)
                and OrderStatus(order.status) in UNPAID
                and await _cas(
                    session,
                    Order,
                    order_id,
                    Order.checked_at.is_(None) | (Order.checked_at <= now - self.check_every),
                    checked_at=now,
                )
            )
        if ask:  # committed above: no transaction is held across the call
            await self._poll_one(ref[0], ref[1], ref[2], source=f"check:user:{user_id}")
        async with self.sessions() as session:
            current = await session.get(Order, order_id)
            assert current is not None
            received = (
                await session.execute(
                    select(Payment.received_amount).where(Payment.order_id == order_id)
                )
            ).scalar()
            status = OrderStatus(current.status)
            partial = notices.partial_view(current, received) if status in OPEN else None
            return PaymentCheck(status, partial)

    async def poll_open(self) -> int:
        """Job: ask the provider about every open invoice (and recently closed ones)."""
        since = utcnow() - LATE_POLL_WINDOW
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(Order.provider, Order.provider_payment_id, Order.provider_hash)
                    .where(Order.provider.is_not(None))
                    .where(
                        (Order.status == OrderStatus.AWAITING_PAYMENT.value)
                        | (
                            Order.status.in_(
                                [OrderStatus.EXPIRED.value, OrderStatus.CANCELLED.value]
                            )
                            & (Order.expires_at > since)
                        )
                    )
                )
            ).all()
        await asyncio.gather(*(self._poll_one(p, pid, h, source="poll") for p, pid, h in rows))
        return len(rows)

    async def _poll_one(
        self,
        provider_name: str | None,
        payment_id: str | None,
        payment_hash: str | None,
        *,
        source: str,
    ) -> None:
        provider = self.providers.get(provider_name or "")
        if provider is None or not payment_id or not payment_hash:
            return
        async with self._poll_limit:
            try:
                status = await provider.fetch_status(payment_id, payment_hash)
            except ExternalError as exc:
                log.warning(
                    "poll_failed provider=%s payment_id=%s error=%s", provider_name, payment_id, exc
                )
                return
        await self.apply_status(status, source=source)

    # ---------------------------------------------------------------- expiry
    async def expire_overdue(self) -> int:
        """Job: expire unpaid invoices past their time, after one last look at the provider."""
        now = utcnow()
        async with self.sessions() as session:
            overdue = (
                await session.execute(
                    select(
                        Order.id, Order.provider, Order.provider_payment_id, Order.provider_hash
                    ).where(
                        Order.status == OrderStatus.AWAITING_PAYMENT.value, Order.expires_at < now
                    )
                )
            ).all()
            stale_new = (
                (
                    await session.execute(
                        select(Order.id).where(
                            Order.status == OrderStatus.NEW.value,
                            Order.created_at < now - self.stale_new,
                        )
                    )
                )
                .scalars()
                .all()
            )
        expired = 0
        for order_id, provider, payment_id, payment_hash in overdue:
            await self._poll_one(provider, payment_id, payment_hash, source="expiry_check")
            async with self.sessions() as session, session.begin():
                order = await session.get(Order, order_id)
                assert order is not None
                previous = await repo.transition(
                    session,
                    order_id,
                    [OrderStatus.AWAITING_PAYMENT],
                    OrderStatus.EXPIRED,
                    actor="job:expiry",
                    kind="expired",
                    where={"expires_at": order.expires_at},
                )
                if previous is None:
                    continue
                expired += 1
                # Read after the write: a partial transfer committed meanwhile counts.
                partial_seen = (
                    await session.execute(select(Order.partial_seen).where(Order.id == order_id))
                ).scalar_one()
                if partial_seen:
                    await self.notifier.user(
                        session,
                        order.user_id,
                        "notify.partial_expired",
                        dedupe=f"expired:{order_id}",
                        order_id=order_id,
                    )
                    await self.notifier.admin(
                        session,
                        "admin.refund_partial",
                        dedupe=f"refund-partial:{order_id}",
                        order_id=order_id,
                        user_id=order.user_id,
                        provider=order.provider,
                        payment_id=order.provider_payment_id,
                        address=order.pay_address,
                    )
                else:
                    await self.notifier.user(
                        session,
                        order.user_id,
                        "notify.expired",
                        dedupe=f"expired:{order_id}",
                        order_id=order_id,
                    )
        for order_id in stale_new:
            # The invoice call never came back (crash or provider hang): nobody saw an
            # address, so nobody can have paid; close it.
            async with self.sessions() as session, session.begin():
                await repo.transition(
                    session,
                    order_id,
                    [OrderStatus.NEW],
                    OrderStatus.CANCELLED,
                    actor="job:expiry",
                    kind="invoice_never_created",
                )
        return expired


def _mismatch(status: PaymentStatus, payment: Payment, order: Order) -> str | None:
    """Why a provider report does not belong to the order we stored, if it doesn't."""
    if status.provider != payment.provider or status.provider != order.provider:
        return "provider"
    if status.payment_id != payment.provider_payment_id:
        return "payment_id"
    if status.payment_hash != payment.provider_hash:
        return "hash"
    if status.fiat_currency != payment.fiat_currency or payment.fiat_currency != order.currency:
        return "currency"
    if status.fiat_amount != payment.fiat_amount or payment.fiat_amount != order.total_usd:
        return "amount"
    if status.crypto_code != payment.crypto_code:
        return "crypto_currency"
    if not status.fiat_priced and status.crypto_amount != payment.crypto_amount:
        return "crypto_amount"
    if status.reference is not None and status.reference != order_reference(order.id):
        return "reference"
    return None


async def _cas(
    session: AsyncSession,
    table: type[Order] | type[Payment],
    row_id: int,
    condition: Any,
    **values: Any,
) -> bool:
    """Set ``values`` on one row if ``condition`` holds; True when this call changed it."""
    query = update(table).where(table.id == row_id)
    if condition is not None:
        query = query.where(condition)
    result = await session.execute(
        query.values(**values).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def _mark_partial(session: AsyncSession, order_id: int, condition: Any) -> str | None:
    """Set ``partial_seen`` (if ``condition`` holds); the order's status then, or None."""
    # Never on an order whose payment counted meanwhile (a concurrent "paid" won): then
    # this report is the stale one.
    query = update(Order).where(
        Order.id == order_id, Order.status.not_in([s.value for s in SETTLED])
    )
    if condition is not None:
        query = query.where(condition)
    result = await session.execute(
        query.values(partial_seen=True)
        .returning(Order.status)
        .execution_options(synchronize_session=False)
    )
    return result.scalar_one_or_none()
