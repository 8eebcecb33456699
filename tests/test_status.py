"""The order state machine (db/status.py): every move in TRANSITIONS goes through the
compare-and-set helper, any other is refused, and docs/architecture.md shows the table.

The database is SQLite in a temp dir, or the PostgreSQL named by TEST_DATABASE_URL
(wiped first).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from db import repo
from db.engine import create_engine
from db.migrate import upgrade_to_head
from db.models import Order, OrderEvent, User
from db.status import (
    CLAIMABLE,
    OPEN,
    REFUNDABLE,
    RETRYABLE,
    SETTLED,
    TERMINAL,
    TRANSITIONS,
    UNPAID,
    IllegalTransition,
    OrderStatus,
    mermaid,
)
from tests.harness import database_url, wipe_postgres

ROOT = Path(__file__).resolve().parent.parent

PAIRS = [(source, target) for source in OrderStatus for target in TRANSITIONS[source]]
ILLEGAL = [
    (source, target)
    for source in OrderStatus
    for target in OrderStatus
    if target not in TRANSITIONS[source]
]


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    url = database_url(tmp_path)
    if os.environ.get("TEST_DATABASE_URL"):
        await wipe_postgres(url)
    engine = create_engine(url)
    await upgrade_to_head(engine)
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


async def _order(sessions: async_sessionmaker[AsyncSession], status: OrderStatus) -> int:
    now = utcnow()
    async with sessions() as session, session.begin():
        if await session.get(User, 1) is None:
            session.add(User(id=1, created_at=now))
            await session.flush()
        order = Order(
            user_id=1,
            status=status.value,
            model="m",
            tokens=1,
            unit_price=Decimal("1"),
            base_usd=Decimal("1.00"),
            markup_usd=Decimal("0.00"),
            total_usd=Decimal("1.00"),
            asset="USDT",
            created_at=now,
            updated_at=now,
            attempts=0,
        )
        session.add(order)
        await session.flush()
        return order.id


async def test_every_listed_transition_goes_through(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    for source, target in PAIRS:
        order_id = await _order(sessions, source)
        async with sessions() as session, session.begin():
            previous = await repo.transition(
                session, order_id, [source], target, actor="test", kind="walk"
            )
        assert previous is source, (source, target)
        async with sessions() as session:
            assert (await session.get(Order, order_id)).status == target.value  # type: ignore[union-attr]
            event = (
                await session.execute(select(OrderEvent).where(OrderEvent.order_id == order_id))
            ).scalar_one()
            assert (event.from_status, event.to_status) == (source.value, target.value)


async def test_an_unlisted_transition_is_refused_and_changes_nothing(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    order_id = await _order(sessions, OrderStatus.DELIVERED)
    async with sessions() as session, session.begin():
        with pytest.raises(IllegalTransition):
            await repo.transition(
                session, order_id, [OrderStatus.DELIVERED], OrderStatus.PAID, actor="t", kind="k"
            )
        # One illegal source among legal ones is still a bug in the caller.
        with pytest.raises(IllegalTransition):
            await repo.transition(
                session,
                order_id,
                [OrderStatus.FAILED, OrderStatus.DELIVERED],
                OrderStatus.REFUNDED,
                actor="t",
                kind="k",
            )
    async with sessions() as session:
        assert (await session.get(Order, order_id)).status == "delivered"  # type: ignore[union-attr]
        events = (
            await session.execute(select(OrderEvent).where(OrderEvent.order_id == order_id))
        ).all()
        assert events == []


@pytest.mark.parametrize(("source", "target"), ILLEGAL, ids=lambda s: s.value)
async def test_every_unlisted_pair_is_refused_before_the_database(
    source: OrderStatus, target: OrderStatus
) -> None:
    # Refused before the session is touched: no database needed.
    with pytest.raises(IllegalTransition):
        await repo.transition(None, 1, [source], target, actor="t", kind="k")  # type: ignore[arg-type]


def test_the_groups_the_code_moves_are_in_the_table() -> None:
    """The compare-and-sets written with a group: each of its members may make the move."""
    for group, target in [
        (UNPAID, OrderStatus.PAID),
        (CLAIMABLE, OrderStatus.FULFILLING),
        (RETRYABLE, OrderStatus.PAID),
        (REFUNDABLE, OrderStatus.REFUNDED),
    ]:
        assert all(target in TRANSITIONS[s] for s in group), (sorted(group), target)
    assert UNPAID | SETTLED | {OrderStatus.REFUNDED} == set(OrderStatus)
    assert not UNPAID & SETTLED
    assert OPEN <= UNPAID
    assert {OrderStatus.DELIVERED, OrderStatus.REFUNDED} == TERMINAL


def test_the_architecture_doc_shows_the_table() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"```mermaid\n(.*?)\n```", doc, re.S)
    assert block is not None, "docs/architecture.md has no mermaid block"
    assert block.group(1) == mermaid(), "regenerate it: python -m db.status"
