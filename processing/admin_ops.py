"""Admin operations: /stats, /order, /retry, /refund, /balance, /reconcile, re-check funds.

``AdminOps`` is the one admin object handlers get. Screens for the admin's answers are
rendered in ``bot/admin_screens.py``; only the reconciliation alert, which the system
sends by itself through the notifier, is worded here. No DB transaction is open during
an HTTP call: read (close) → call out → write (commit).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from core.money import format_crypto, format_usd
from db import repo
from db.models import ApiKey, Order, OrderEvent, OrderStatus
from db.status import SETTLED, UNPAID
from locales import Translator, translator
from processing.fulfilment import KEY_NAME_PREFIX, BuyerBusy, Fulfilment, FundsRecheck, LeaseLost
from services.admin_ledger import (
    ActionOutcome,
    ActionResult,
    AdminLedger,
    OrderDossier,
    Period,
    Stats,
)
from services.errors import ExternalError, OpenRouterError
from services.notify import Notifier
from services.openrouter import OpenRouterClient
from services.payments.base import PaymentProvider, RefundsToPayer
from services.payments.health import ProviderHealth, ProviderState

log = logging.getLogger(__name__)

RECONCILE_WINDOW = timedelta(days=7)
PAID_STATES = {
    OrderStatus.PAID.value,
    OrderStatus.FULFILLING.value,
    OrderStatus.AWAITING_FUNDS.value,
    OrderStatus.DELIVERED.value,
    OrderStatus.FAILED.value,
}


class PayerRefundOutcome:
    DONE = "done"
    ALREADY = "already"  # paid back before (a second press, or a retry after a crash)
    NOT_OFFERED = "not_offered"  # not refunded yet, or its provider cannot pay back
    FAILED = "failed"


@dataclass(frozen=True)
class PayerRefundResult:
    outcome: str
    order_id: int
    asset: str = ""
    amount: Decimal = Decimal(0)
    transfer_id: str | None = None
    error: str | None = None


def payer_refund_spend_id(order_id: int) -> str:
    """One per order, forever: the provider pays a spend id at most once."""
    return f"refund-order-{order_id}"


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
    """The one admin object handlers get: /stats /order /retry /refund /balance /reconcile
    and the `🔄 Re-check balance` button. Database-only questions go to the ledger;
    this adds the OpenRouter and provider side and kicks fulfilment."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        ledger: AdminLedger,
        fulfilment: Fulfilment,
        openrouter: OpenRouterClient,
        providers: dict[str, PaymentProvider],
        notifier: Notifier,
        *,
        provider_health: ProviderHealth | None = None,
    ) -> None:
        self.sessions = sessions
        self.ledger = ledger
        self.fulfilment = fulfilment
        self.openrouter = openrouter
        self.providers = providers
        self.notifier = notifier
        self.provider_health = provider_health or ProviderHealth()

    # ------------------------------------------------------------- ledger
    async def stats(self, period: Period) -> Stats:
        return await self.ledger.stats(period)

    async def order_dossier(self, order_id: int) -> OrderDossier | None:
        return await self.ledger.order_dossier(order_id)

    async def settle_attention(self, order_id: int, admin_id: int) -> ActionResult:
        return await self.ledger.settle_attention(order_id, admin_id)

    # ------------------------------------------------------------- commands
    async def balance(self) -> Balance:
        funds = await self.fulfilment.funds()
        keys = 0
        async for key in self.openrouter.iter_keys():
            if key.name.startswith(KEY_NAME_PREFIX) and not key.disabled:
                keys += 1
        return Balance(funds.available, funds.committed, keys)

    async def payer_refund_offer(self, order_id: int) -> tuple[str, Decimal] | None:
        """(asset, amount) to offer `💸 Refund to buyer` for, when the order is refunded
        and its provider can send the payment back (Crypto Pay); None otherwise."""
        async with self.sessions() as session:
            order = await session.get(Order, order_id)
        if order is None or order.status != OrderStatus.REFUNDED.value:
            return None
        if not isinstance(self.providers.get(order.provider or ""), RefundsToPayer):
            return None
        if not order.crypto_amount or order.crypto_amount <= 0:
            return None
        return order.asset, order.crypto_amount

    async def refund_to_payer(self, order_id: int, admin_id: int) -> PayerRefundResult:
        """`💸 Refund to buyer`: send what the buyer paid back to them, exactly once.

        Only for a `refunded` order: /refund already took the credit off the buyer's key
        (confirmed at OpenRouter) before recording that. The intent is an event before
        the call, no transaction spans it, and the spend id is the order's, so a double
        press, a retry or a crash between the transfer and its record pays once: the
        provider answers a repeat with the first transfer, which is then recorded."""
        offer = await self.payer_refund_offer(order_id)
        if offer is None:
            return PayerRefundResult(PayerRefundOutcome.NOT_OFFERED, order_id)
        asset, amount = offer
        async with self.sessions() as session, session.begin():
            order = await session.get(Order, order_id)
            assert order is not None
            user_id, provider_name = order.user_id, order.provider or ""
            done = await self._recorded_transfer(session, order_id)
            if done is not None:
                return PayerRefundResult(
                    PayerRefundOutcome.ALREADY, order_id, asset, amount, transfer_id=done
                )
            repo.add_event(
                session,
                order_id,
                "payer_refund_started",
                actor=f"admin:{admin_id}",
                detail={"asset": asset, "amount": str(amount)},
                status=order.status,
            )
        provider = self.providers[provider_name]
        assert isinstance(provider, RefundsToPayer)
        try:
            sent = await provider.refund_to_payer(
                spend_id=payer_refund_spend_id(order_id),
                user_id=user_id,
                asset=asset,
                amount=amount,
            )
        except ExternalError as exc:
            async with self.sessions() as session, session.begin():
                repo.add_event(
                    session,
                    order_id,
                    "payer_refund_failed",
                    actor=f"admin:{admin_id}",
                    detail={"error": str(exc)[:500]},
                    status=OrderStatus.REFUNDED.value,
                )
            log.warning("payer_refund_failed order=%s error=%s", order_id, exc)
            return PayerRefundResult(
                PayerRefundOutcome.FAILED, order_id, asset, amount, error=str(exc)
            )
        async with self.sessions() as session, session.begin():
            # The order's row lock orders two presses' records (PostgreSQL).
            await session.get(Order, order_id, with_for_update=True)
            done = await self._recorded_transfer(session, order_id)
            if done is not None:
                # A concurrent press recorded the same transfer (one spend id, one
                # payment): that press says "sent back", this one "already".
                return PayerRefundResult(
                    PayerRefundOutcome.ALREADY, order_id, asset, amount, transfer_id=done
                )
            repo.add_event(
                session,
                order_id,
                "payer_refunded",
                actor=f"admin:{admin_id}",
                detail={
                    "transfer_id": sent.transfer_id,
                    "asset": sent.asset,
                    "amount": str(sent.amount),
                    "replayed": sent.replayed,
                },
                status=OrderStatus.REFUNDED.value,
            )
            await self.notifier.user(
                session,
                user_id,
                "notify.payer_refunded",
                dedupe=f"payer-refunded:{order_id}",
                order_id=order_id,
                amount=format_crypto(sent.amount, sent.asset),
                asset=sent.asset,
            )
        log.info("payer_refunded order=%s transfer=%s", order_id, sent.transfer_id)
        return PayerRefundResult(
            PayerRefundOutcome.DONE, order_id, asset, amount, transfer_id=sent.transfer_id
        )

    @staticmethod
    async def _recorded_transfer(session: AsyncSession, order_id: int) -> str | None:
        detail = (
            await session.execute(
                select(OrderEvent.detail).where(
                    OrderEvent.order_id == order_id, OrderEvent.kind == "payer_refunded"
                )
            )
        ).scalar()
        return None if detail is None else str(detail.get("transfer_id"))

    def provider_states(self) -> list[ProviderState]:
        """Each configured payment provider: in use, or cooling down after failures."""
        return self.provider_health.states(list(self.providers))

    async def recheck_funds(self) -> FundsRecheck:
        """`🔄 Re-check balance`: measure now and resume the orders waiting for funds."""
        return await self.fulfilment.resume_waiting()

    async def retry(self, order_id: int, admin_id: int) -> tuple[ActionResult, str | None]:
        """Back to `paid`, then fulfil now; returns the result and the status after."""
        result = await self.ledger.retry(order_id, admin_id)
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
        check = await self.ledger.refundable(order_id)
        if check.outcome is not ActionOutcome.DONE or check.user_id is None:
            return check
        user_id = check.user_id
        try:
            async with self.fulfilment.buyer_lease(user_id) as token:
                limit = await self.fulfilment.reassert_ledger(user_id, token)

                async def fence(session: AsyncSession) -> None:
                    await self.fulfilment.renew(session, user_id, token)

                return await self.ledger.refund(
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
            if status.is_paid and row.status in UNPAID:
                report.mismatches.append(Mismatch("provider_paid", str(row.id), params))
            elif not status.is_paid and row.status in SETTLED:
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
                        detail=mismatch_text(t, mismatch),
                    )
        log.info(
            "reconciled orders=%s keys=%s mismatches=%s unchecked=%s",
            report.orders_checked,
            report.keys_checked,
            len(report.mismatches),
            len(report.unchecked),
        )
        return report


def mismatch_text(t: Translator, mismatch: Mismatch) -> str:
    """One mismatch, as the alert and the /reconcile answer both word it."""
    return t(f"admin_report.mismatch.{mismatch.kind}", **mismatch.params)
