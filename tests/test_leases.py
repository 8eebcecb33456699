"""Leases outlast the worst OpenRouter call (issue 9 §8), tested at the minimum allowed.

Two replicas (two ``Fulfilment`` objects with their own OpenRouter clients) share the
database. Their clients use short timeouts so the minimum lease — one call with all its
retries plus the margin, the same rule bot/settings.py enforces — is seconds, not
minutes; the holder really stalls in real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from processing.fulfilment import Fulfilment
from sandbox.runner import MANAGEMENT_KEY
from services.openrouter import OpenRouterClient, min_lease_seconds
from tests.harness import Env, running_env

BUYER = 919191
STARTER = Decimal("1.65")


@asynccontextmanager
async def replica(env: Env) -> AsyncIterator[Fulfilment]:
    client = OpenRouterClient(
        f"{env.sandbox.openrouter_url}/api/v1", MANAGEMENT_KEY, timeout=0.5, attempts=3
    )
    lease = timedelta(seconds=min_lease_seconds(client.worst_call_seconds))
    try:
        yield Fulfilment(
            env.app.sessions,
            client,
            env.app.vault,
            env.app.notifier,
            lease=lease,
            funds_lease=lease,
            retry_base=timedelta(milliseconds=50),
        )
    finally:
        await client.aclose()


async def paid_order(env: Env) -> int:
    env.app.processor.on_paid = None  # only the replicas below fulfil
    order_id = await env.buy(BUYER)
    await env.pay(order_id)
    await env.wait_status(order_id, "paid")
    return order_id


async def test_stalled_holder_cannot_patch_after_its_leases_passed_on(tmp_path: Path) -> None:
    """A stalls holding the buyer's lease and the funds lease, longer than both; B takes
    both over and delivers; A wakes up and must not PATCH (its limit may be stale)."""
    async with running_env(tmp_path) as env, replica(env) as a, replica(env) as b:
        order_id = await paid_order(env)
        stall = a.lease.total_seconds() + 1
        real_credits = a.openrouter.credits
        patches_by_a: list[Decimal] = []
        real_set_limit = a.openrouter.set_key_limit

        async def stalled_credits() -> Any:
            await asyncio.sleep(stall)  # inside the funds lease, under the buyer's lease
            return await real_credits()

        async def set_limit_by_a(key_hash: str, limit: Decimal) -> Any:
            patches_by_a.append(limit)
            return await real_set_limit(key_hash, limit)

        a.openrouter.credits = stalled_credits  # type: ignore[method-assign]
        a.openrouter.set_key_limit = set_limit_by_a  # type: ignore[method-assign]
        holder = asyncio.create_task(a.fulfil_user(BUYER))
        await env.wait_status(order_id, "fulfilling")
        # B keeps trying, as the fulfilment job would; it gets in only once A's leases ran out.
        loop = asyncio.get_running_loop()
        started = loop.time()
        while (await env.order(order_id)).status != "delivered":
            await b.fulfil_user(BUYER)
            await asyncio.sleep(0.2)
            assert loop.time() - started < 3 * stall, "B never took over"
        assert loop.time() - started >= a.lease.total_seconds() - 1  # not before A's lease
        await holder
        assert patches_by_a == []  # A woke up after losing its leases: no write
        keys = [k for k in await env.orc.keys() if not k["deleted"]]
        assert [k["limit"] for k in keys] == [STARTER]
        events = [e.kind for e in await env.events(order_id)]
        assert events.count("delivered") == 1


async def test_lease_outlasts_a_patch_with_all_its_retries(tmp_path: Path) -> None:
    """A's PATCH and its retries all hang to the client's deadline: the worst call.
    B, trying all along, cannot take the buyer over while any of them is in flight."""
    async with running_env(tmp_path) as env, replica(env) as a, replica(env) as b:
        order_id = await paid_order(env)
        await env.orc.add_fault(
            path="/api/v1/keys/", method="PATCH", mode="timeout", delay=0.8, count=3
        )
        holder = asyncio.create_task(a.fulfil_user(BUYER))
        while not holder.done():
            await b.fulfil_user(BUYER)  # must find the buyer's lease held
            await asyncio.sleep(0.05)
        await holder
        patches = [r for r in await env.orc.requests() if r["method"] == "PATCH"]
        assert len(patches) == 3  # A's three tries, none from B meanwhile
        # A gave the order back for a retry and let go: now B delivers it.
        await env.update_order(order_id, next_attempt_at=None)
        await b.fulfil_user(BUYER)
        await env.wait_status(order_id, "delivered")
        keys = [k for k in await env.orc.keys() if not k["deleted"]]
        assert [k["limit"] for k in keys] == [STARTER]
