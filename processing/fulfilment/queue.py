"""Which orders are due, and the queue of orders waiting for funds (package docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db.models import Order, OrderStatus
from processing.funds import Funds


@dataclass(frozen=True)
class FundsRecheck:
    """What a re-check of the waiting orders found and did."""

    funds: Funds
    delivered: int  # of the orders that were waiting
    waiting: int  # still waiting for funds


def retry_due(now: datetime) -> ColumnElement[bool]:
    """The order's next attempt may go now (it has no retry time, or that time came)."""
    return (Order.next_attempt_at.is_(None)) | (Order.next_attempt_at <= now)


def due_for_fulfilment(now: datetime) -> ColumnElement[bool]:
    """An order a fulfilment run picks up: paid and due, or left ``fulfilling`` by a
    worker whose lease ran out. Orders waiting for funds are ``resume_waiting``'s."""
    return or_(
        (Order.status == OrderStatus.PAID.value) & retry_due(now),
        (Order.status == OrderStatus.FULFILLING.value) & (Order.lease_until < now),
    )


def next_for_buyer(now: datetime) -> ColumnElement[bool]:
    """An order the worker holding its buyer's lease takes next."""
    return or_(
        (Order.status == OrderStatus.PAID.value) & retry_due(now),
        # Under the user lease no one else is working on it.
        Order.status == OrderStatus.FULFILLING.value,
        (Order.status == OrderStatus.AWAITING_FUNDS.value) & retry_due(now),
    )


async def count_orders(session: AsyncSession, *where: Any) -> int:
    return int(
        (await session.execute(select(func.count()).select_from(Order).where(*where))).scalar_one()
    )


async def queued_before(
    sessions: async_sessionmaker[AsyncSession], order_id: int, paid_at: datetime | None
) -> Decimal:
    """What the orders waiting for funds ahead of this one need (module docstring).

    Ahead = paid earlier (the order id breaks ties). An order waiting is
    ``awaiting_funds``, or ``fulfilling`` on a retry after waiting
    (``funds_needed_usd`` set): the one being retried right now keeps its place."""
    before = (
        Order.id < order_id
        if paid_at is None
        else or_(Order.paid_at < paid_at, and_(Order.paid_at == paid_at, Order.id < order_id))
    )
    async with sessions() as session:
        total = (
            await session.execute(
                select(func.sum(Order.funds_needed_usd)).where(
                    before,
                    Order.status.in_(
                        [OrderStatus.AWAITING_FUNDS.value, OrderStatus.FULFILLING.value]
                    ),
                    Order.funds_needed_usd.is_not(None),
                )
            )
        ).scalar_one_or_none()
    return Decimal(total or 0)
