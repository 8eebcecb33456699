"""The operator's view of the ledger: period figures, one order's dossier, retry, refund.

Database only (no HTTP): ``processing/admin_ops.py`` (the one admin object handlers
get) wraps it with the OpenRouter side (balance, reconciliation, the refund's key
check). Money is summed in Python with Decimal — SQLite stores it as text, and SQL SUM
would go through float.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from core.limits import MAX_ROW_ID
from db import repo
from db.models import Order, OrderEvent, OrderStatus, Payment, User
from db.status import CLOSED_UNPAID, REFUNDABLE, RETRYABLE, SETTLED
from services.chat import ModelChatStats, chat_stats
from services.notify import Notifier

ZERO = Decimal("0.00")
ATTENTION_SHOWN = 20


@dataclass(frozen=True)
class Period:
    """[start, end) in UTC, with the local dates it covers (for titles and dedupe keys)."""

    start: datetime
    end: datetime
    first_day: date
    last_day: date


def local_day_start(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time.min, tzinfo=zone)


def days_period(first_day: date, last_day: date, timezone: str) -> Period:
    """Whole local days ``first_day``..``last_day`` inclusive."""
    zone = ZoneInfo(timezone)
    return Period(
        local_day_start(first_day, zone),
        local_day_start(last_day + timedelta(days=1), zone),
        first_day,
        last_day,
    )


def recent_period(days: int, timezone: str, now: datetime | None = None) -> Period:
    """The last ``days`` local days including today (today = 1), up to now."""
    now = now or utcnow()
    today = now.astimezone(ZoneInfo(timezone)).date()
    first = today - timedelta(days=days - 1)
    return days_period(first, today, timezone)


@dataclass(frozen=True)
class Stats:
    period: Period
    created: int
    paid: int
    delivered: int
    revenue: Decimal
    base_cost: Decimal
    markup: Decimal
    expired: int
    failed: int
    refunded: int
    # Open now, whatever the period: what needs the operator's eye.
    pending: int
    awaiting_funds: int
    # 💬 Chat in the period: answers, tokens and cost per model (on the buyers' keys).
    chat: tuple[ModelChatStats, ...] = ()
    # Settled orders paid in the period per payment provider: (name, orders, revenue).
    by_provider: tuple[tuple[str, int, Decimal], ...] = ()
    # Open now: orders flagged for the operator (money arrived that the bot could not
    # settle by itself), oldest first, at most ATTENTION_SHOWN of them, and how many.
    attention: tuple[int, ...] = ()
    attention_total: int = 0


@dataclass(frozen=True)
class OrderDossier:
    """One order as the admin sees it (/order): with its buyer, timeline and receipt.
    Not the buyer's ``services.orders.OrderView``."""

    order: Order
    user: User | None
    events: list[OrderEvent] = field(default_factory=list)
    received: Decimal | None = None  # the sum the provider reported, if it reports one


class ActionOutcome(StrEnum):
    DONE = "done"
    NOT_FOUND = "not_found"
    WRONG_STATE = "wrong_state"
    # /refund only: the buyer's key could not be confirmed, so nothing was recorded.
    BUYER_BUSY = "buyer_busy"
    OPENROUTER_DOWN = "openrouter_down"


@dataclass(frozen=True)
class ActionResult:
    outcome: ActionOutcome
    status: str | None = None  # the order's status before (or, if refused, now)
    user_id: int | None = None
    error: str | None = None


# Runs first in the transaction that records a refund: re-asserts the buyer's lease, or
# raises (rolling the transaction back) when it was lost.
Fence = Callable[[AsyncSession], Awaitable[None]]


class AdminLedger:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], notifier: Notifier | None = None
    ) -> None:
        self.sessions = sessions
        # Tells the buyer of a refund, in the transaction that records it.
        self.notifier = notifier

    # ------------------------------------------------------------- figures
    async def stats(self, period: Period) -> Stats:
        async with self.sessions() as session:
            created = await _count(session, Order.created_at, period)
            paid = await _count(session, Order.paid_at, period)
            delivered = await _count(session, Order.delivered_at, period)
            rows = await session.execute(
                select(Order.total_usd, Order.base_usd, Order.markup_usd, Order.provider).where(
                    Order.paid_at >= period.start,
                    Order.paid_at < period.end,
                    Order.status.in_([s.value for s in SETTLED]),
                )
            )
            revenue = base = markup = ZERO
            providers: dict[str, tuple[int, Decimal]] = {}
            for total_usd, base_usd, markup_usd, provider in rows:
                revenue += total_usd
                base += base_usd
                markup += markup_usd
                count, earned = providers.get(provider or "—", (0, ZERO))
                providers[provider or "—"] = (count + 1, earned + total_usd)
            moved = {
                status: await _moved_to(session, status, period)
                for status in (OrderStatus.EXPIRED, OrderStatus.FAILED, OrderStatus.REFUNDED)
            }
            open_now = dict(
                (
                    await session.execute(
                        select(Order.status, func.count())
                        .where(
                            Order.status.in_(
                                [
                                    OrderStatus.AWAITING_PAYMENT.value,
                                    OrderStatus.AWAITING_FUNDS.value,
                                ]
                            )
                        )
                        .group_by(Order.status)
                    )
                ).all()
            )
            chat = await chat_stats(session, period.start, period.end)
            flagged = Order.attention.is_not(None)
            attention = (
                await session.execute(
                    select(Order.id).where(flagged).order_by(Order.id).limit(ATTENTION_SHOWN)
                )
            ).scalars()
            attention_ids = tuple(attention)
            attention_total = len(attention_ids)
            if attention_total == ATTENTION_SHOWN:
                attention_total = int(
                    (await session.execute(select(func.count()).where(flagged))).scalar_one()
                )
        return Stats(
            period=period,
            created=created,
            paid=paid,
            delivered=delivered,
            revenue=revenue,
            base_cost=base,
            markup=markup,
            expired=moved[OrderStatus.EXPIRED],
            failed=moved[OrderStatus.FAILED],
            refunded=moved[OrderStatus.REFUNDED],
            pending=int(open_now.get(OrderStatus.AWAITING_PAYMENT.value, 0)),
            awaiting_funds=int(open_now.get(OrderStatus.AWAITING_FUNDS.value, 0)),
            chat=tuple(chat),
            by_provider=tuple(
                (name, count, earned) for name, (count, earned) in sorted(providers.items())
            ),
            attention=attention_ids,
            attention_total=attention_total,
        )

    async def order_dossier(self, order_id: int) -> OrderDossier | None:
        if not 0 < order_id <= MAX_ROW_ID:
            return None
        async with self.sessions() as session:
            order = await session.get(Order, order_id)
            if order is None:
                return None
            user = await session.get(User, order.user_id)
            events = (
                await session.execute(
                    select(OrderEvent)
                    .where(OrderEvent.order_id == order_id)
                    .order_by(OrderEvent.id)
                )
            ).scalars()
            received = (
                await session.execute(
                    select(Payment.received_amount).where(Payment.order_id == order_id)
                )
            ).scalar()
            return OrderDossier(order, user, list(events), received)

    # ------------------------------------------------------------- actions
    async def retry(self, order_id: int, admin_id: int) -> ActionResult:
        """Back to `paid` with a fresh attempt budget; the caller kicks fulfilment."""
        if not 0 < order_id <= MAX_ROW_ID:
            return ActionResult(ActionOutcome.NOT_FOUND)
        async with self.sessions() as session, session.begin():
            order = await session.get(Order, order_id)
            if order is None:
                return ActionResult(ActionOutcome.NOT_FOUND)
            previous = await repo.transition(
                session,
                order_id,
                RETRYABLE,
                OrderStatus.PAID,
                actor=f"admin:{admin_id}",
                kind="admin_retry",
                detail={"attempts_before": order.attempts, "last_error": order.last_error},
                attempts=0,
                next_attempt_at=None,
                lease_owner=None,
                lease_until=None,
            )
            if previous is None:
                return ActionResult(ActionOutcome.WRONG_STATE, order.status, order.user_id)
            # The buyer hears nothing yet: the delivery that follows tells them.
            return ActionResult(ActionOutcome.DONE, previous.value, order.user_id)

    async def settle_attention(self, order_id: int, admin_id: int) -> ActionResult:
        """The operator has dealt with what flagged the order (a refund by hand, a talk
        with the buyer): clear the flag, by compare-and-set on the reason the operator
        saw, with an event naming who. ``status`` carries the reason that was cleared;
        WRONG_STATE means nothing was flagged (a second press)."""
        if not 0 < order_id <= MAX_ROW_ID:
            return ActionResult(ActionOutcome.NOT_FOUND)
        async with self.sessions() as session, session.begin():
            order = await session.get(Order, order_id)
            if order is None:
                return ActionResult(ActionOutcome.NOT_FOUND)
            reason = order.attention
            if reason is None:
                return ActionResult(ActionOutcome.WRONG_STATE, order.status, order.user_id)
            cleared = await session.execute(
                update(Order)
                .where(Order.id == order_id, Order.attention == reason)
                .values(attention=None)
            )
            if cleared.rowcount != 1:  # type: ignore[attr-defined]
                return ActionResult(ActionOutcome.WRONG_STATE, order.status, order.user_id)
            repo.add_event(
                session,
                order_id,
                "attention_settled",
                actor=f"admin:{admin_id}",
                detail={"reason": reason},
                status=order.status,
            )
            return ActionResult(ActionOutcome.DONE, reason, order.user_id)

    async def refundable(self, order_id: int) -> ActionResult:
        """Whether /refund may go ahead (DONE, with the buyer), without changing anything."""
        if not 0 < order_id <= MAX_ROW_ID:
            return ActionResult(ActionOutcome.NOT_FOUND)
        async with self.sessions() as session:
            order = await session.get(Order, order_id)
            if order is None:
                return ActionResult(ActionOutcome.NOT_FOUND)
            status = OrderStatus(order.status)
            if status in REFUNDABLE or (status in CLOSED_UNPAID and order.partial_seen):
                return ActionResult(ActionOutcome.DONE, order.status, order.user_id)
            return ActionResult(ActionOutcome.WRONG_STATE, order.status, order.user_id)

    async def refund(
        self,
        order_id: int,
        admin_id: int,
        note: str,
        *,
        fence: Fence | None = None,
        key_limit: Decimal | None = None,
    ) -> ActionResult:
        """Record that the operator refunded the buyer by hand (no crypto moves here).

        The caller has already put the buyer's key at the ledger without this order
        (``key_limit``, confirmed by OpenRouter) under the buyer's lease; ``fence``
        re-asserts that lease in this transaction.
        """
        async with self.sessions() as session, session.begin():
            if fence is not None:
                await fence(session)
            order = await session.get(Order, order_id)
            if order is None:
                return ActionResult(ActionOutcome.NOT_FOUND)
            detail: dict[str, Any] = {"note": note}
            if key_limit is not None:
                detail["key_limit"] = str(key_limit)
            common: dict[str, Any] = {
                "actor": f"admin:{admin_id}",
                "kind": "refunded",
                "detail": detail,
                "refund_note": note,
                "lease_owner": None,
                "lease_until": None,
                "next_attempt_at": None,
            }
            previous = await repo.transition(
                session, order_id, REFUNDABLE, OrderStatus.REFUNDED, **common
            )
            if previous is None:
                previous = await repo.transition(
                    session,
                    order_id,
                    CLOSED_UNPAID,  # only when part of a payment arrived
                    OrderStatus.REFUNDED,
                    where={"partial_seen": True},
                    **common,
                )
            if previous is None:
                return ActionResult(ActionOutcome.WRONG_STATE, order.status, order.user_id)
            if self.notifier is not None:
                # The admin's note is for the books; the buyer hears what happens to them.
                await self.notifier.user(
                    session,
                    order.user_id,
                    "notify.refunded",
                    dedupe=f"refunded:{order_id}",
                    order_id=order_id,
                )
            return ActionResult(ActionOutcome.DONE, previous.value, order.user_id)


async def _count(session: AsyncSession, column: Any, period: Period) -> int:
    return int(
        (
            await session.execute(
                select(func.count())
                .select_from(Order)
                .where(column >= period.start, column < period.end)
            )
        ).scalar_one()
    )


async def _moved_to(session: AsyncSession, status: OrderStatus, period: Period) -> int:
    """Orders that entered ``status`` during the period (from the event log)."""
    return int(
        (
            await session.execute(
                select(func.count(func.distinct(OrderEvent.order_id))).where(
                    OrderEvent.to_status == status.value,
                    OrderEvent.from_status != status.value,
                    OrderEvent.at >= period.start,
                    OrderEvent.at < period.end,
                )
            )
        ).scalar_one()
    )
