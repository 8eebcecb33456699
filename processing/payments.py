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

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo
from db.models import Order, OrderStatus, Payment
from services.clock import utcnow
from services.errors import ExternalError, OrderNotFound
from services.jsonutil import jsonable
from services.logcontext import annotate, bind
from services.money import format_crypto, format_tokens, format_usd
from services.notify import Notifier
from services.payments.base import PaymentProvider, PaymentStatus

log = logging.getLogger(__name__)

# A full payment after expiry or cancellation is still honoured (SPEC §3).
PAYABLE = (
    OrderStatus.NEW,
    OrderStatus.AWAITING_PAYMENT,
    OrderStatus.EXPIRED,
    OrderStatus.CANCELLED,
)
LATE_POLL_WINDOW = timedelta(hours=24)
STALE_NEW_ORDER = timedelta(minutes=10)


class Outcome(StrEnum):
    UNKNOWN = "unknown"  # no such payment of ours: acknowledged and ignored
    MISMATCH = "mismatch"  # signed but not what we stored: never delivered
    PAID = "paid"  # this call moved the order to paid
    ALREADY = "already"  # paid earlier (duplicate, replay, race loser)
    PENDING = "pending"  # not (fully) paid yet


@dataclass(frozen=True)
class ApplyResult:
    outcome: Outcome
    order_id: int | None = None
    user_id: int | None = None


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
    ) -> None:
        self.sessions = sessions
        self.providers = providers
        self.notifier = notifier
        self.on_paid = on_paid
        self.stale_new = stale_new
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
                    reason=reason,
                )
                return ApplyResult(Outcome.MISMATCH, order.id, order.user_id)

            await session.execute(
                update(Payment)
                .where(Payment.id == payment.id)
                .values(
                    updates=Payment.updates + 1,
                    last_payload=jsonable(status.raw),
                    updated_at=utcnow(),
                    # Once paid, a later (stale or replayed) report never un-pays it.
                    is_paid=Payment.is_paid | status.is_paid,
                )
            )
            if not status.is_paid:
                if source.startswith("callback") and not order.partial_seen:
                    # The provider calls back on a transfer; an unpaid callback means
                    # part of the amount arrived (SPEC §3: partial transfers are summed).
                    await session.execute(
                        update(Order).where(Order.id == order.id).values(partial_seen=True)
                    )
                    repo.add_event(
                        session,
                        order.id,
                        "payment_partial",
                        actor=source,
                        status=order.status,
                        detail={"payload": jsonable(status.raw)},
                    )
                return ApplyResult(Outcome.PENDING, order.id, order.user_id)

            previous = await repo.transition(
                session,
                order.id,
                PAYABLE,
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
            )
            if previous is None:
                return ApplyResult(Outcome.ALREADY, order.id, order.user_id)
            late = previous in (OrderStatus.EXPIRED, OrderStatus.CANCELLED)
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
                tokens=format_tokens(order.tokens),
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
            return ApplyResult(Outcome.PAID, order.id, order.user_id)

    # ------------------------------------------------------------------ poll
    async def check_order(self, user_id: int, order_id: int) -> OrderStatus:
        """The buyer's "Check payment": ask the provider now, then report the status."""
        async with self.sessions() as session:
            order = await session.get(Order, order_id)
            if order is None or order.user_id != user_id:
                raise OrderNotFound()
            ref = (order.provider, order.provider_payment_id, order.provider_hash)
        if all(ref) and OrderStatus(order.status) in PAYABLE:
            await self._poll_one(ref[0], ref[1], ref[2], source=f"check:user:{user_id}")
        async with self.sessions() as session:
            status = (
                await session.execute(select(Order.status).where(Order.id == order_id))
            ).scalar_one()
        return OrderStatus(status)

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
                if order.partial_seen:
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
    if status.crypto_amount != payment.crypto_amount:
        return "crypto_amount"
    return None
