"""Repositories: queries and guarded writes. They never commit; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.clock import utcnow
from db.models import ApiKey, Order, OrderEvent, OutboxMessage, User
from db.status import OrderStatus, OutboxStatus, check_transition


async def transition(
    session: AsyncSession,
    order_id: int,
    allowed: Iterable[OrderStatus],
    to: OrderStatus,
    *,
    actor: str,
    kind: str,
    detail: dict[str, Any] | None = None,
    where: dict[str, Any] | None = None,
    **values: Any,
) -> OrderStatus | None:
    """Compare-and-set an order's status; on success append an event.

    Returns the status the order had (the row count decides who acts), or None when
    the order was not in an allowed state and nothing changed. A move TRANSITIONS does
    not list raises ``IllegalTransition`` before anything is read.
    """
    allowed = list(allowed)
    check_transition(allowed, to)
    now = utcnow()
    conditions = [Order.id == order_id, Order.status.in_([s.value for s in allowed])]
    for column, value in (where or {}).items():
        conditions.append(getattr(Order, column) == value)
    # Read the previous status for the event, then write only if it is still the one
    # read: the row count decides who acts.
    previous = (await session.execute(select(Order.status).where(*conditions))).scalar_one_or_none()
    if previous is None:
        return None
    result = await session.execute(
        update(Order)
        .where(*conditions, Order.status == previous)
        .values(status=to.value, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    session.add(
        OrderEvent(
            order_id=order_id,
            at=now,
            kind=kind,
            from_status=previous,
            to_status=to.value,
            actor=actor,
            detail=detail,
        )
    )
    return OrderStatus(previous)


def add_event(
    session: AsyncSession,
    order_id: int,
    kind: str,
    *,
    actor: str,
    detail: dict[str, Any] | None = None,
    status: str | None = None,
) -> None:
    session.add(
        OrderEvent(
            order_id=order_id,
            at=utcnow(),
            kind=kind,
            from_status=status,
            to_status=status,
            actor=actor,
            detail=detail,
        )
    )


async def count_events(session: AsyncSession, order_id: int, kind: str) -> int:
    """How many events of ``kind`` the order has (the session's unflushed ones included)."""
    return int(
        (
            await session.execute(
                select(func.count())
                .select_from(OrderEvent)
                .where(OrderEvent.order_id == order_id, OrderEvent.kind == kind)
            )
        ).scalar_one()
    )


async def add_outbox(
    session: AsyncSession,
    *,
    chat_id: int,
    text: str,
    dedupe_key: str | None,
    kind: str = "text",
    payload: dict[str, Any] | None = None,
    category: str | None = None,
) -> None:
    """Queue a message; a second write with the same dedupe key does nothing."""
    now = utcnow()
    values = {
        "chat_id": chat_id,
        "kind": kind,
        "text": text,
        "payload": payload,
        "category": category,
        "dedupe_key": dedupe_key,
        "status": OutboxStatus.PENDING.value,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
    if dedupe_key is None:
        await session.execute(insert(OutboxMessage).values(**values))
    else:
        await session.execute(
            upsert_insert(session)(OutboxMessage)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
        )


def upsert_insert(session: AsyncSession) -> Callable[..., Any]:
    """The session's dialect's ``insert`` (the one with ON CONFLICT), imported on first
    use: the PostgreSQL dialect package is about 2 MiB resident that a SQLite bot never
    needs (issue 14 item 6)."""
    dialect = session.bind.dialect.name if session.bind is not None else ""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


async def delivered_base_sum(session: AsyncSession, user_id: int) -> Decimal:
    """Σ base cost of the buyer's delivered orders — the ledger their key limit must equal."""
    rows = await session.execute(
        select(Order.base_usd).where(
            Order.user_id == user_id, Order.status == OrderStatus.DELIVERED.value
        )
    )
    # Summed in Python: SQLite keeps money as text, and SQL SUM would go through float.
    return sum((value for (value,) in rows), Decimal("0.00"))


async def get_api_key(session: AsyncSession, user_id: int) -> ApiKey | None:
    return (
        await session.execute(select(ApiKey).where(ApiKey.user_id == user_id))
    ).scalar_one_or_none()


async def user_language(session: AsyncSession, user_id: int) -> str:
    lang = (await session.execute(select(User.language).where(User.id == user_id))).scalar()
    return lang or "en"


def lease_free(lease_until: Any, now: datetime) -> Any:
    """The SQL condition "no one holds this lease": never taken, or run out.

    One spelling for every leased row (buyers, orders' workers, the funds ledger, the
    outbox), so what counts as a free lease cannot differ between them."""
    return lease_until.is_(None) | (lease_until < now)
