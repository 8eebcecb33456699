"""Many payments confirmed at once (issue 14 item 3): every buyer gets the key message
and exactly the credit paid for, with few transactions per order and the funds lease
taken once per batch of deliveries, not once per order.

Counts, not timings (figures belong to bench/payments.py): the transactions the
confirm → delivery path opens (the outbox sender's own are counted apart), and how
often the funds lease was taken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from core.clock import utcnow
from db.models import FundsLedger
from services.openrouter import Credits
from tests.harness import Env, running_env

FIRST_BUYER = 7_300_000
BUYERS = 24


@dataclass
class Counts:
    path: int = 0  # transactions of the confirm → delivery path
    outbox: int = 0  # the outbox sender's (sending is paced per chat, counted apart)
    funds_leases: int = 0  # the funds lease taken (attempts that found it held excluded)


@contextmanager
def counting(env: Env) -> Iterator[Counts]:
    counts = Counts()
    sender = env.app.outbox
    plain = sender.sessions

    def outbox_session(**kw: Any) -> Any:
        return plain(info={"outbox": True}, **kw)

    def began(session: Session, _transaction: Any, _connection: Any) -> None:
        if session.info.get("outbox"):
            counts.outbox += 1
        else:
            counts.path += 1

    def statement(_conn: Any, cursor: Any, text: str, *_args: Any) -> None:
        # The lease's acquiring UPDATE is the one that also decides whether to trust
        # the stored figure (a CASE on the previous holder); it took the lease if it
        # changed the row.
        acquiring = text.lstrip().upper().startswith("UPDATE FUNDS_LEDGER") and "CASE" in text
        if acquiring and cursor.rowcount == 1:
            counts.funds_leases += 1

    sender.sessions = outbox_session  # type: ignore[assignment]
    progress = sender.progress.service  # the sender's broadcast progress ticks
    progress.sessions = outbox_session  # type: ignore[assignment]
    event.listen(Session, "after_begin", began)
    event.listen(env.app.engine.sync_engine, "after_cursor_execute", statement)
    try:
        yield counts
    finally:
        event.remove(Session, "after_begin", began)
        event.remove(env.app.engine.sync_engine, "after_cursor_execute", statement)
        sender.sessions = plain
        progress.sessions = plain


async def _place(env: Env, buyers: list[int]) -> tuple[dict[int, int], list[str]]:
    """Orders placed (buyer -> order id) and their provider payment ids, not yet paid."""
    orders: dict[int, int] = {}
    for start in range(0, len(buyers), 4):  # a few at a time: buying is not measured
        chunk = buyers[start : start + 4]
        placed = await asyncio.gather(*(env.buy(b) for b in chunk))
        orders.update(zip(chunk, placed, strict=True))
    payments = [str((await env.order(o)).provider_payment_id) for o in orders.values()]
    return orders, payments


async def test_payments_at_once_are_delivered_in_batches(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.orc.set_credits(Decimal("1000"))
        buyers = [FIRST_BUYER + i for i in range(BUYERS)]
        orders, payments = await _place(env, buyers)
        await asyncio.sleep(0.5)  # the invoice screens' own writes are not counted
        with counting(env) as counts:
            await asyncio.gather(*(env.kx.pay(p) for p in payments))
            messages = await asyncio.gather(
                *(env.delivered_message(b, o, timeout=60) for b, o in orders.items())
            )

        keys = {k["name"]: k for k in await env.orc.keys()}
        # What each buyer saw: their own order's key message, with their own key.
        for (buyer, order_id), message in zip(orders.items(), messages, strict=True):
            assert f"Order #{order_id} delivered" in message["text"]
            assert keys[f"tg-{buyer}"]["key"] in message["text"]
        # The database: every order delivered once, each buyer's key at its ledger.
        for buyer, order_id in orders.items():
            order = await env.order(order_id)
            assert order.status == "delivered"
            kinds = [e.kind for e in await env.events(order_id)]
            assert kinds.count("delivered") == 1
            key = await env.api_key(buyer)
            assert key is not None and key.limit_usd == order.base_usd
            # The emulator: the key OpenRouter holds carries exactly what was paid for.
            assert Decimal(str(keys[f"tg-{buyer}"]["limit"])) == order.base_usd
        assert len(keys) == BUYERS

        per_order = counts.path / BUYERS
        assert per_order <= 6, (counts.path, counts.outbox)
        # Once per batch: deliveries that reach the funds check together share a lease.
        # (How many arrive together depends on timing: 13 and 16 leases for 24 seen here.)
        assert counts.funds_leases < BUYERS, counts.funds_leases


async def test_the_balance_is_read_before_the_lease_once_per_batch(tmp_path: Path) -> None:
    """GET /credits is read outside the funds lease (a slow answer must not hold up
    every delivery behind the lease), exactly once per batch: never once per order,
    never reused by a later batch (outside usage would be missed)."""
    async with running_env(tmp_path) as env:
        await env.orc.set_credits(Decimal("1000"))
        client = env.app.fulfilment.shared_funds.openrouter
        read = client.credits
        under_lease: list[bool] = []

        async def credits() -> Credits:
            async with env.app.sessions() as session:
                ledger = (await session.execute(select(FundsLedger))).scalar_one()
            held = ledger.lease_until is not None and ledger.lease_until > utcnow()
            under_lease.append(ledger.lease_owner is not None and held)
            return await read()

        orders, payments = await _place(env, [FIRST_BUYER + i for i in range(BUYERS + 1)])
        first = next(iter(orders.items()))
        await env.kx.pay(payments[0])  # measures the figure (a listing reads the balance)
        await env.delivered_message(*first, timeout=60)
        await asyncio.sleep(0.5)
        client.credits = credits  # type: ignore[method-assign]
        with counting(env) as counts:
            await asyncio.gather(*(env.kx.pay(p) for p in payments[1:]))
            for buyer, order_id in list(orders.items())[1:]:
                await env.delivered_message(buyer, order_id, timeout=60)
        during = len(under_lease)
        # One more order later: its batch reads the balance again, not the last one's.
        late = FIRST_BUYER + BUYERS + 1
        order_id = await env.buy(late)
        await env.pay(order_id)
        await env.delivered_message(late, order_id, timeout=60)

        assert not any(under_lease), under_lease
        # Once per batch: one read per lease taken (nobody else held it here).
        assert 0 < during == counts.funds_leases < BUYERS, (during, counts.funds_leases)
        assert len(under_lease) == during + 1
