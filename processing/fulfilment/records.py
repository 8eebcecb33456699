"""Recording how one attempt ended: delivered, waiting for funds, or failed (retry or give up).

Each record is one transaction fenced by the buyer's lease, with its messages written
to the outbox in it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.callbacks import MenuCb
from core.clock import utcnow
from core.metrics import Metrics
from core.money import ceil_cents, format_usd
from db import repo
from db.models import ApiKey, Order, OrderStatus
from locales import Phrase
from processing.fulfilment.ledger import LedgerReassert
from processing.funds import Funds
from services.errors import OpenRouterError
from services.notify import API_KEY_SLOT, Notifier
from services.openrouter import KeyInfo
from services.quota import last_known

log = logging.getLogger(__name__)

T = TypeVar("T")

# Buttons under a delivery: buy more, see the quota (callback data of core.callbacks.MenuCb).
AFTER_DELIVERY = [
    [
        ("menu.ai_tokens", MenuCb(action="tokens").pack()),
        ("menu.quota", MenuCb(action="quota").pack()),
    ]
]


class AttemptRecords(LedgerReassert):
    """Part of ``Fulfilment``: one transaction per way an attempt ends."""

    notifier: Notifier
    metrics: Metrics
    max_attempts: int
    retry_base: timedelta
    funds_recheck: timedelta

    async def _delivered(
        self,
        order_id: int,
        user_id: int,
        token: str,
        key_hash: str,
        target: Decimal,
        info: KeyInfo,
        created: bool,
        *,
        then: Callable[[AsyncSession], Awaitable[T]],
    ) -> T:
        """Record the delivery, its message in the outbox, and ``then`` (the buyer's next
        order, or letting go of the buyer) in one transaction; returns what ``then`` did."""
        async with self.sessions() as session, session.begin():
            await self._renew(session, user_id, token)
            order = await session.get(Order, order_id)
            assert order is not None
            paid_at, delivered_at = order.paid_at, utcnow()
            await self._leave_fulfilling(
                session,
                order_id,
                token,
                OrderStatus.DELIVERED,
                kind="delivered",
                detail={"key_hash": key_hash, "limit_usd": str(target)},
                delivered_at=delivered_at,
                next_attempt_at=None,
                last_error=None,
            )
            key_row = await repo.get_api_key(session, user_id)
            assert key_row is not None
            show_key = not key_row.key_shown
            # A new updated_at is a new version of the key row: every replica's /quota cache
            # misses on it (services/quota.py). The PATCH's answer becomes the last known
            # figures, shown if OpenRouter is down on the next /quota.
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_row.id)
                .values(
                    limit_usd=target,
                    updated_at=utcnow(),
                    key_shown=True,
                    **last_known(info, utcnow()),
                )
            )
            usage = info.usage
            remaining = (
                info.limit_remaining if info.limit_remaining is not None else (target - usage)
            )
            params: dict[str, Any] = {
                "order_id": order_id,
                "tokens": Phrase("unit.tokens", count=order.tokens),
                "model": order.model,
                "limit": format_usd(target),
                "used": format_usd(usage),
                "remaining": format_usd(remaining),
            }
            if show_key:
                await self.notifier.user(
                    session,
                    user_id,
                    "notify.delivered_new_key",
                    dedupe=f"delivered:{order_id}",
                    payload={"secret_key_of": user_id},
                    buttons=AFTER_DELIVERY,
                    api_key=API_KEY_SLOT,
                    **params,
                )
            else:
                await self.notifier.user(
                    session,
                    user_id,
                    "notify.delivered_topup",
                    dedupe=f"delivered:{order_id}",
                    buttons=AFTER_DELIVERY,
                    **params,
                )
            following = await then(session)
        log.info(
            "delivered order=%s user=%s limit=%s new_key=%s", order_id, user_id, target, created
        )
        if paid_at is not None:  # counted once committed
            self.metrics.delivered((delivered_at - paid_at).total_seconds())
        return following

    async def _await_funds(
        self,
        order_id: int,
        user_id: int,
        token: str,
        told: Decimal | None,
        needed: Decimal,
        ahead: Decimal,
        funds: Funds,
        *,
        release: bool = False,
    ) -> None:
        """``release``: let go of the buyer's lease in the same transaction."""
        # The real shortfall: a negative headroom is money the operator already owes the
        # keys, so it is topped up too (module docstring for ``ahead``).
        topup = ceil_cents(needed + ahead - funds.headroom)
        async with self.sessions() as session, session.begin():
            await self._renew(session, user_id, token)
            if release:
                await self._let_go(session, user_id, token)
            await self._leave_fulfilling(
                session,
                order_id,
                token,
                OrderStatus.AWAITING_FUNDS,
                kind="awaiting_funds",
                detail={
                    "needed": str(needed),
                    "ahead": str(ahead),
                    "available": str(funds.available),
                    "committed": str(funds.committed),
                    "topup": str(topup),
                },
                next_attempt_at=utcnow() + self.funds_recheck,
                funds_needed_usd=needed,
                funds_topup_usd=topup,
                # Waiting for the operator's money is no failed attempt: each re-check
                # claims the order (attempts + 1), so give that back, or an order that
                # waited through `max_attempts` re-checks would fail on its first
                # transient OpenRouter error once the money is there.
                attempts=Order.attempts - 1,
            )
            # The alerts' dedupe keys need a number that never repeats for this order
            # (`attempts` no longer moves while it waits): the count of its funds waits,
            # this one included. One alert per figure comes from `told`, stored with it.
            wait = await repo.count_events(session, order_id, "awaiting_funds")
            figures = {
                "order_id": order_id,
                "provider": await _provider(session, order_id),
                "topup": format_usd(topup),
                "available": format_usd(funds.available),
                "committed": format_usd(funds.committed),
                "needed": format_usd(needed),
                "ahead": format_usd(ahead),
            }
            # The figure told is stored in this transaction, fenced by the lease: told once
            # per figure. Dedupe per attempt: an order back in the queue after /retry of a
            # failure (which forgets the figure) is announced again.
            if told is not None and told != topup:
                await self.notifier.admin(
                    session,
                    "admin.awaiting_funds_changed",
                    dedupe=f"awaiting-funds:{order_id}:{wait}:{topup}",
                    recheck=True,
                    previous=format_usd(told),
                    **figures,
                )
            elif told is None:
                await self.notifier.admin(
                    session,
                    "admin.awaiting_funds",
                    dedupe=f"awaiting-funds:{order_id}:{wait}",
                    recheck=True,
                    **figures,
                )
                await self.notifier.user(
                    session,
                    user_id,
                    "notify.delayed",
                    dedupe=f"delayed:{order_id}",
                    order_id=order_id,
                )
        log.warning("awaiting_funds order=%s topup=%s", order_id, topup)

    async def _attempt_failed(
        self,
        order_id: int,
        user_id: int,
        token: str,
        attempts: int,
        exc: OpenRouterError,
        *,
        release: bool = False,
    ) -> None:
        """``release``: let go of the buyer's lease in the same transaction (no window
        in which the attempt is recorded but the buyer still held by a stopped worker)."""
        give_up = not exc.transient or attempts >= self.max_attempts
        failure: dict[str, Any] = {"error": str(exc), "attempts": attempts}
        if give_up:
            # A PATCH of this attempt, or of an earlier one cut short by a crash, may have
            # landed with its answer lost: the credit may be on the key. A failed order is
            # out of the ledger, so the key goes back to the ledger without it, confirmed.
            try:
                limit = await self.reassert_ledger(user_id, token)
                if limit is not None:
                    failure["key_limit"] = str(limit)
            except OpenRouterError as reassert_error:
                if reassert_error.transient:
                    # Can't confirm the key now: don't give up with credit maybe on it;
                    # the next attempt either delivers or gets here again.
                    give_up = False
                    exc = OpenRouterError(
                        "openrouter",
                        f"{exc}; key limit not confirmed after it: {reassert_error}",
                        transient=True,
                    )
                else:
                    failure["key_unconfirmed"] = str(reassert_error)
        async with self.sessions() as session, session.begin():
            await self._renew(session, user_id, token)
            if release:
                await self._let_go(session, user_id, token)
            if give_up:
                await self._leave_fulfilling(
                    session,
                    order_id,
                    token,
                    OrderStatus.FAILED,
                    kind="fulfilment_failed",
                    detail=failure,
                    last_error=str(exc)[:2000],
                    # Out of the funds queue; an admin's /retry starts it afresh.
                    funds_needed_usd=None,
                    funds_topup_usd=None,
                )
                await self.notifier.admin(
                    session,
                    "admin.fulfilment_failed",
                    dedupe=f"failed:{order_id}:{attempts}",
                    order_id=order_id,
                    user_id=user_id,
                    provider=await _provider(session, order_id),
                    error=str(exc)[:500],
                    attempts=attempts,
                )
                await self.notifier.user(
                    session,
                    user_id,
                    "notify.failed",
                    dedupe=f"failed:{order_id}",
                    order_id=order_id,
                )
            else:
                delay = self.retry_base * (2 ** (attempts - 1))
                await self._leave_fulfilling(
                    session,
                    order_id,
                    token,
                    OrderStatus.PAID,
                    kind="fulfilment_retry",
                    detail={
                        "error": str(exc),
                        "attempts": attempts,
                        "retry_in_s": delay.total_seconds(),
                    },
                    last_error=str(exc)[:2000],
                    next_attempt_at=utcnow() + min(delay, timedelta(minutes=30)),
                )
        log.warning(
            "fulfilment_attempt_failed order=%s attempts=%s give_up=%s error=%s",
            order_id,
            attempts,
            give_up,
            exc,
        )


async def _provider(session: AsyncSession, order_id: int) -> str:
    """The payment provider an alert about the order names (the admins settle by it)."""
    name = (await session.execute(select(Order.provider).where(Order.id == order_id))).scalar()
    return name or "—"
