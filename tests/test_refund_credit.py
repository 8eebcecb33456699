"""A refund never leaves the credit on the key (issue 9 §1).

OpenRouter may apply a PATCH and lose its answer (a 500 after applying, a dropped
connection). The order then goes back to ``paid`` or ends ``failed`` with the credit
already on the buyer's key. Before ``/refund`` is recorded, and when an order ends
``failed`` after such a PATCH, the bot sets the key to the ledger value without that
order and reads it back; if OpenRouter cannot confirm it, nothing is recorded.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from core.clock import utcnow
from db.models import User
from sandbox.runner import ADMIN_ID
from services.errors import OpenRouterError
from tests.harness import Env, running_env
from tests.test_admin import ask

BUYER = 818181
STARTER = Decimal("1.65")
# One attempt per order, and no automatic retry inside the test's time.
ONE_ATTEMPT = {"max_attempts": 1}
NO_RETRY_SOON = {"retry_base": timedelta(hours=1)}


async def wait_event(env: Env, order_id: int, kind: str) -> None:
    for _ in range(200):
        if any(e.kind == kind for e in await env.events(order_id)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} event on order {order_id}")


async def key_limit(env: Env) -> Decimal:
    keys = [k for k in await env.orc.keys() if not k["deleted"]]
    assert len(keys) == 1, keys
    return Decimal(str(keys[0]["limit"]))


async def test_failed_after_an_applied_patch_takes_the_credit_back(tmp_path: Path) -> None:
    async with running_env(tmp_path, fulfilment=ONE_ATTEMPT) as env:
        first = await env.buy(BUYER)
        await env.pay(first)
        await env.delivered_message(BUYER, first)
        second = await env.buy(BUYER, new_chat=False)
        # Every PATCH lands and every answer is lost: the attempt gives up.
        await env.orc.add_fault(
            path="/api/v1/keys/", method="PATCH", mode="apply_then_status", status=500, count=None
        )
        await env.pay(second)
        await env.wait_status(second, "failed")
        await env.tg.wait_for_text(env.admin_chat, f"Fulfilment failed for order #{second}")
        await env.tg.wait_for_text(BUYER, "Your payment is safe")
        # OpenRouter holds the ledger without the failed order, confirmed by a read-back.
        assert await key_limit(env) == STARTER
        log = await env.orc.requests()
        patches = [r for r in log if r["method"] == "PATCH"]
        assert patches[-1]["body"] == {"limit": STARTER}
        assert log[-1]["method"] == "GET" and log[-1]["path"] == patches[-1]["path"]
        failed = [e for e in await env.events(second) if e.kind == "fulfilment_failed"]
        assert len(failed) == 1 and failed[0].detail["key_limit"] == str(STARTER)


async def test_refund_takes_the_credit_off_the_key_before_it_is_recorded(tmp_path: Path) -> None:
    async with running_env(tmp_path, fulfilment=NO_RETRY_SOON) as env:
        first = await env.buy(BUYER)
        await env.pay(first)
        await env.delivered_message(BUYER, first)
        second = await env.buy(BUYER, new_chat=False)
        await env.orc.add_fault(
            path="/api/v1/keys/", method="PATCH", mode="apply_then_drop", count=3
        )
        await env.pay(second)
        await wait_event(env, second, "fulfilment_retry")  # back to paid, retry later
        assert await key_limit(env) == 2 * STARTER  # the lost PATCH landed

        answer = await ask(
            env, f"/refund {second} sent back 2 USDT", "marked refunded", chat=env.admin_chat
        )
        assert "(was paid)" in answer["plain"]
        assert (await env.order(second)).status == "refunded"
        assert await key_limit(env) == STARTER
        log = await env.orc.requests()
        assert [r["method"] for r in log[-2:]] == ["PATCH", "GET"]
        assert log[-2]["body"] == {"limit": STARTER}
        refunded = [e for e in await env.events(second) if e.kind == "refunded"]
        assert len(refunded) == 1 and refunded[0].actor == f"admin:{ADMIN_ID}"
        assert refunded[0].detail["key_limit"] == str(STARTER)
        assert (await env.api_key(BUYER)).limit_usd == STARTER  # type: ignore[union-attr]


async def test_refund_is_refused_while_openrouter_is_unreachable_or_the_buyer_busy(
    tmp_path: Path,
) -> None:
    async with running_env(tmp_path, fulfilment=NO_RETRY_SOON) as env:
        first = await env.buy(BUYER)
        await env.pay(first)
        await env.delivered_message(BUYER, first)
        second = await env.buy(BUYER, new_chat=False)
        await env.orc.add_fault(
            path="/api/v1/keys/", method="PATCH", mode="apply_then_status", status=500, count=3
        )
        await env.pay(second)
        await wait_event(env, second, "fulfilment_retry")  # back to paid, retry later
        assert await key_limit(env) == 2 * STARTER

        # OpenRouter down: refused, with why and what to do; nothing recorded.
        await env.orc.add_fault(path="/api/v1/keys", status=503, count=None)
        answer = await ask(
            env, f"/refund {second} sent back", "not marked refunded", chat=env.admin_chat
        )
        assert "OpenRouter" in answer["plain"] and f"/refund {second}" in answer["plain"]
        assert (await env.order(second)).status == "paid"
        assert not [e for e in await env.events(second) if e.kind == "refunded"]
        await env.orc.clear_faults()

        # A delivery holds the buyer's lease: refused too, the key is not touched.
        async with env.app.sessions() as session, session.begin():
            user = await session.get(User, BUYER)
            assert user is not None
            user.lease_owner, user.lease_until = "a-worker", utcnow() + timedelta(minutes=5)
        before = len(await env.orc.requests())
        answer = await ask(env, f"/refund {second} sent back", "delivery for this buyer")
        assert f"/refund {second}" in answer["plain"]
        assert len(await env.orc.requests()) == before
        assert (await env.order(second)).status == "paid"
        async with env.app.sessions() as session, session.begin():
            user = await session.get(User, BUYER)
            assert user is not None
            user.lease_owner, user.lease_until = None, None

        await ask(env, f"/refund {second} sent back", "marked refunded (was paid)")
        assert await key_limit(env) == STARTER


async def test_failure_is_not_recorded_while_the_key_cannot_be_confirmed(tmp_path: Path) -> None:
    """The attempt gives up after a lost PATCH, but the read-back fails too: the order
    must not end ``failed`` with its credit maybe on the key. It goes back to ``paid``
    with the reason, and a later attempt delivers it."""
    async with running_env(tmp_path, fulfilment={**ONE_ATTEMPT, **NO_RETRY_SOON}) as env:
        order_id = await env.buy(BUYER)
        client = env.app.fulfilment.openrouter
        real_get_key = client.get_key

        async def read_back_fails(key_hash: str) -> Any:
            # A new buyer's key is not read before the PATCH (POST /keys described it),
            # so the only read is the read-back after the lost PATCH: it fails.
            raise OpenRouterError("openrouter", "GET /keys: cannot connect", transient=True)

        client.get_key = read_back_fails  # type: ignore[method-assign]
        await env.orc.add_fault(
            path="/api/v1/keys/", method="PATCH", mode="apply_then_status", status=500, count=None
        )
        await env.pay(order_id)
        await wait_event(env, order_id, "fulfilment_retry")
        order = await env.order(order_id)
        assert order.status == "paid" and order.last_error is not None
        assert "key limit not confirmed" in order.last_error
        assert not [e for e in await env.events(order_id) if e.kind == "fulfilment_failed"]

        client.get_key = real_get_key  # type: ignore[method-assign]
        await env.orc.clear_faults()
        await env.update_order(order_id, next_attempt_at=None)
        await env.app.fulfilment.fulfil_user(BUYER)
        await env.delivered_message(BUYER, order_id)
        assert await key_limit(env) == STARTER
