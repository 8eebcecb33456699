"""A burst of payment callbacks larger than the database pool (issue 14 item 3: 1,000
paid at once on PostgreSQL answered 123 callbacks with 500 and failed 222 delivery
attempts, each waiting past the pool's timeout for one of its 20 connections).

The bot admits callbacks and deliveries in proportion to the pool (db/engine.py
``Admission``), so they queue in the bot, not at the pool: here a pool of 2
connections with a 1-second timeout takes many callbacks at once through the real
HTTP server, and every callback is answered 2xx at its first attempt, every order is
delivered once with one attempt, and nothing waited out the pool.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from pathlib import Path

import pytest

from tests.harness import running_env

FIRST_BUYER = 7_400_000
BUYERS = 40


async def test_a_burst_of_callbacks_queues_in_the_bot_not_at_the_pool(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with running_env(
        tmp_path,
        database_pool_size=2,
        database_pool_overflow=0,
        database_pool_timeout_seconds=1.0,
    ) as env:
        await env.orc.set_credits(Decimal("1000"))
        buyers = [FIRST_BUYER + i for i in range(BUYERS)]
        orders: dict[int, int] = {}
        for start in range(0, BUYERS, 4):  # buying is not what this is about
            chunk = buyers[start : start + 4]
            orders.update(
                zip(chunk, await asyncio.gather(*(env.buy(b) for b in chunk)), strict=True)
            )
        payments = [str((await env.order(o)).provider_payment_id) for o in orders.values()]

        paid = await asyncio.gather(*(env.kx.pay(p) for p in payments))
        messages = await asyncio.gather(
            *(env.delivered_message(b, o, timeout=30) for b, o in orders.items())
        )

        # The provider: every callback answered 2xx at its first attempt (no retry needed).
        for result in paid:
            statuses = [d["status"] for d in result["deliveries"]]
            assert statuses == [200], statuses
        # The buyers: each got their own order's key message.
        for (buyer, order_id), message in zip(orders.items(), messages, strict=True):
            assert f"Order #{order_id} delivered" in message["text"], buyer
        # The database: every order delivered once, at its first attempt.
        for order_id in orders.values():
            order = await env.order(order_id)
            assert order.status == "delivered"
            assert order.attempts == 1, (order_id, order.attempts)
            kinds = [e.kind for e in await env.events(order_id)]
            assert kinds.count("delivered") == 1
        # Nothing waited out the pool (it would be logged as a failed callback or attempt).
        timeouts = [r.getMessage() for r in caplog.records if "QueuePool" in r.getMessage()]
        # asyncio's own "Unclosed client session" reports are an earlier test's garbage
        # collected now, not a failure of this burst.
        failures = [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.ERROR and r.name != "asyncio"
        ]
        assert not timeouts and not failures, (timeouts + failures)[:3]
