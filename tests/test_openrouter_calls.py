"""How many OpenRouter calls a delivery costs when the account holds many keys (issue 14 §4).

Listing keys is paged (100 a call), so anything that lists them on a delivery costs
O(buyers) calls. A first delivery must cost O(1): the key list is read only to recover
from a create whose outcome is unknown, and the funds check reads the balance, not every
key. Counted on what the emulator received, not on what the bot believes it sent.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select

from db.models import FundsLedger
from processing.fulfilment import key_name
from sandbox.openrouter import Key
from tests.harness import Env, running_env

OTHERS = 1_000  # ten pages of GET /keys
FIRST = 727_000
FAST_RETRY = {"retry_base": timedelta(0)}


def _seed_keys(env: Env, n: int = OTHERS) -> None:
    """Other buyers' keys, straight into the emulator (as bench/scale.py seeds them),
    and a balance that covers them."""
    env.sandbox.openrouter.total_credits = Decimal("100000")
    for i in range(n):
        key = Key.new(key_name(FIRST + 100_000 + i))
        key.limit = Decimal("5")
        key.usage = Decimal("0.5")
        env.sandbox.openrouter.keys[key.hash] = key


def _calls(requests: list[dict[str, Any]]) -> list[str]:
    """``METHOD /path`` of each API request, a key's hash shown as ``{hash}``."""
    out = []
    for r in requests:
        path = r["path"].removeprefix("/api/v1")
        if path.startswith("/keys/"):
            path = "/keys/{hash}"
        out.append(f"{r['method']} {path}")
    return out


def _lists(requests: list[dict[str, Any]]) -> int:
    return _calls(requests).count("GET /keys")


async def _deliver(env: Env, buyer: int, package: str = "Starter") -> int:
    order_id = await env.buy(buyer, package=package)
    await env.pay(order_id)
    await env.delivered_message(buyer, order_id)
    return order_id


async def _retry_after_failure(env: Env, order_id: int) -> None:
    """The kicked attempt failed and put the order back: the fulfilment job runs."""
    for _ in range(200):
        if "fulfilment_retry" in [e.kind for e in await env.events(order_id)]:
            break
        await asyncio.sleep(0.05)
    await env.wait_status(order_id, "paid")
    await env.app.fulfilment.run_due()


async def _delivered_soon(env: Env, order_id: int) -> None:
    """The fulfilment job runs until the order is delivered (its interval is idle in
    tests; a run that found the buyer still held by the failed attempt does nothing)."""
    for _ in range(150):
        if (await env.order(order_id)).status == "delivered":
            return
        await env.app.fulfilment.run_due()
        await asyncio.sleep(0.1)
    raise AssertionError(f"order {order_id} not delivered")


async def _last_seq(env: Env) -> int:
    return max((r["seq"] for r in await env.orc.requests()), default=0)


async def test_first_delivery_among_many_keys_costs_three_calls(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        _seed_keys(env)
        await _deliver(env, FIRST)  # the first ever: the funds figure is measured once
        assert _lists(await env.orc.requests()) == OTHERS // 100 + 1

        for buyer in (FIRST + 1, FIRST + 2):
            seq = await _last_seq(env)
            order_id = await _deliver(env, buyer)
            calls = _calls(await env.orc.requests(after=seq))
            # Create the key, read the balance, raise the limit: nothing else.
            assert sorted(calls) == ["GET /credits", "PATCH /keys/{hash}", "POST /keys"], calls
            key = await env.api_key(buyer)
            assert key is not None and key.limit_usd == Decimal("1.65")
            assert (await env.order(order_id)).status == "delivered"
        live = [k for k in await env.orc.keys() if not k["deleted"]]
        assert len(live) == OTHERS + 3


async def test_a_lost_create_answer_is_looked_up_and_leaves_one_key(tmp_path: Path) -> None:
    """POST /keys made the key and its answer was lost: only then is the list read."""
    async with running_env(tmp_path, fulfilment=FAST_RETRY) as env:
        _seed_keys(env)
        await _deliver(env, FIRST)  # the funds figure is measured
        seq = await _last_seq(env)
        await env.orc.add_fault(path="/api/v1/keys", method="POST", mode="apply_then_drop")
        order_id = await env.buy(FIRST + 1)
        await env.pay(order_id)
        await _retry_after_failure(env, order_id)
        delivered = await env.delivered_message(FIRST + 1, order_id)
        requests = await env.orc.requests(after=seq)
        calls = _calls(requests)
        assert calls.count("POST /keys") == 2
        assert _lists(requests) == (OTHERS + 2) // 100 + 1  # one scan for the orphan
        assert calls.count("DELETE /keys/{hash}") == 1
        mine = [k for k in await env.orc.keys() if k["name"] == key_name(FIRST + 1)]
        live = [k for k in mine if not k["deleted"]]
        assert len(mine) == 2 and len(live) == 1  # the orphan is gone, one key remains
        assert live[0]["limit"] == Decimal("1.65") and live[0]["key"] in delivered["text"]


async def test_a_refused_create_is_retried_without_a_lookup(tmp_path: Path) -> None:
    """OpenRouter answered "no" (429): no key was made, so nothing needs looking up."""
    async with running_env(tmp_path, fulfilment=FAST_RETRY) as env:
        _seed_keys(env)
        await _deliver(env, FIRST)
        seq = await _last_seq(env)
        await env.orc.add_fault(path="/api/v1/keys", method="POST", status=429)
        order_id = await env.buy(FIRST + 1)
        await env.pay(order_id)
        await _retry_after_failure(env, order_id)
        await _delivered_soon(env, order_id)
        await env.delivered_message(FIRST + 1, order_id)
        requests = await env.orc.requests(after=seq)
        assert _calls(requests).count("POST /keys") == 2
        assert _lists(requests) == 0
        kinds = [e.kind for e in await env.events(order_id)]
        assert "key_create_refused" in kinds


async def test_usage_outside_buyer_keys_is_seen_without_listing_keys(tmp_path: Path) -> None:
    """The operator's own usage lowers the balance, not what buyers' keys may spend: the
    next check reads it from GET /credits and the order waits with the exact top-up
    (FUNDS_BALANCE_TTL_SECONDS=0: the balance is read before every raise)."""
    async with running_env(tmp_path, funds_balance_ttl_seconds=0) as env:
        await env.orc.set_credits(total_credits=Decimal("10.00"), total_usage=Decimal("0"))
        await _deliver(env, FIRST)  # committed $1.65
        # Usage on no buyer's key (the operator's own key, another app): $8 of $10.
        await env.orc.set_credits(total_usage=Decimal("8.00"))
        seq = await _last_seq(env)
        order_id = await env.buy(FIRST + 1)
        await env.pay(order_id)
        await env.wait_status(order_id, "awaiting_funds")
        # $2.00 − $1.65 = $0.35 left for a $1.65 order: top up $1.30.
        await env.tg.wait_for_text(
            env.admin_chat, f"Order #{order_id} awaits funds. Top up OpenRouter by exactly $1.30"
        )
        assert "GET /credits" in _calls(await env.orc.requests(after=seq))


async def test_the_background_listing_reclaims_what_buyers_spent(tmp_path: Path) -> None:
    """Between listings the figure keeps what buyers spent as still committed (it errs
    high); the funds job's listing, when due, brings it back to what the keys say, and
    keeps a raise booked while it listed."""
    async with running_env(tmp_path) as env:
        _seed_keys(env, 10)  # $4.50 left on each
        await _deliver(env, FIRST)
        ledger = await _ledger(env)
        assert ledger.committed == Decimal("46.65")
        key = await env.api_key(FIRST)
        assert key is not None
        await env.orc.spend(key.openrouter_hash, Decimal("1.00"))
        funds = env.app.fulfilment.shared_funds
        await env.app.fulfilment.recheck_due()  # the listing is not due yet
        assert (await _ledger(env)).measured_at == ledger.measured_at

        funds.remeasure_every = timedelta(0)
        list_committed = funds._list_committed

        async def raise_meanwhile() -> Decimal:
            listed = await list_committed()
            async with funds.hold() as hold:  # a delivery books $2 while the list is read
                hold.spent(Decimal("2.00"))
            return listed

        funds._list_committed = raise_meanwhile  # type: ignore[method-assign]
        seq = await _last_seq(env)
        await env.app.fulfilment.recheck_due()
        relisted = await _ledger(env)
        assert relisted.measured_at is not None and ledger.measured_at is not None
        assert relisted.measured_at > ledger.measured_at
        assert relisted.committed == Decimal("45.65") + Decimal("2.00")
        assert relisted.available == Decimal("99999.00")  # the $1 spent is off the balance
        assert _lists(await env.orc.requests(after=seq)) == 1


async def _ledger(env: Env) -> FundsLedger:
    async with env.app.sessions() as session:
        return (await session.execute(select(FundsLedger))).scalar_one()


async def test_the_listing_needs_no_lease(tmp_path: Path) -> None:
    """At 100,000 keys a listing can outlast the funds lease: the job lists without it,
    so deliveries are not held up and no holder is taken over mid-listing."""
    async with running_env(tmp_path) as env:
        _seed_keys(env, 10)
        funds = env.app.fulfilment.shared_funds
        async with funds.hold():  # a delivery holds the lease all along
            assert await asyncio.wait_for(funds.relist_if_due(), 10)
        ledger = await _ledger(env)
        assert ledger.measured_at is not None and ledger.committed == Decimal("45.00")
        assert ledger.lease_owner is None
