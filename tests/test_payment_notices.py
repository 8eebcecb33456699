"""No payment kept in silence (issue 9 §2, §3, §6, §7).

Partial transfers, transfers after an order closed, overpayments, late "not paid" noise
and the throttled "🔄 Check payment": what the buyer and the admin group see, the event
rows, and how often the provider is asked. Every callback is delivered several times
(and the poll repeats it) to prove each distinct payment is told exactly once.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from core.clock import utcnow
from tests.harness import Env, running_env
from tests.test_admin import ask

BUYER = 626262


def _texts(messages: list[dict[str, Any]], needle: str) -> list[str]:
    return [m["plain"] for m in messages if m["from_bot"] and needle in (m["plain"] or "")]


async def _settle(env: Env) -> None:
    """Let queued callbacks land and the outbox drain."""
    await asyncio.sleep(0.6)


async def _kinds(env: Env, order_id: int) -> list[str]:
    return [e.kind for e in await env.events(order_id)]


async def _polls(env: Env) -> int:
    return len([r for r in await env.kx.requests() if r["method"] == "GET"])


async def test_partial_transfer_tells_the_buyer_once_what_is_missing(tmp_path: Path) -> None:
    """With a provider that reports the sum received: exact figures, one message per
    transfer, the same in 🔄 Check payment and in the admin's /order."""
    async with running_env(tmp_path) as env:
        await env.kx.set_options(report_received=True)
        order_id = await env.buy(BUYER)  # 1.98 USDT
        deadline = (await env.order(order_id)).expires_at
        assert deadline is not None
        await env.pay(order_id, amount=Decimal("1.00"), deliveries=3, concurrent=True)
        await env.app.processor.poll_open()
        await env.app.processor.poll_open()
        message = await env.tg.wait_for_text(BUYER, "Still missing")
        assert "1.000000 of 1.980000 USDT" in message["plain"]
        assert "0.980000" in message["plain"]
        assert deadline.strftime("%Y-%m-%d %H:%M UTC") in message["plain"]
        await _settle(env)
        assert len(_texts(await env.tg.messages(BUYER), "Still missing")) == 1
        assert (await _kinds(env, order_id)).count("payment_partial") == 1

        pressed = await env.tg.press(BUYER, "🔄 Check payment")
        answer = await env.tg.callback_answer(pressed["callback_query_id"])
        assert "No payment yet" not in answer["text"]
        assert "1.000000 of 1.980000" in answer["text"] and "0.980000" in answer["text"]

        view = await ask(env, f"/order {order_id}", f"Order #{order_id}")
        assert "Received 1.000000 of 1.980000 USDT (missing 0.980000)" in view["plain"]

        # A second transfer is a new payment state: told once more, with the new figure.
        await env.pay(order_id, amount=Decimal("0.50"), deliveries=2, concurrent=True)
        await env.tg.wait_for_text(BUYER, "1.500000 of 1.980000 USDT")
        await _settle(env)
        assert len(_texts(await env.tg.messages(BUYER), "Still missing")) == 2
        assert (await _kinds(env, order_id)).count("payment_partial") == 2
        await env.pay(order_id)  # the rest
        await env.delivered_message(BUYER, order_id)


async def test_partial_transfer_on_the_documented_wire(tmp_path: Path) -> None:
    """KryptoExpress's documented object has no received amount: the buyer is told a
    transfer arrived short, once, however often the callback and the poll repeat it."""
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.pay(order_id, amount=Decimal("1.00"), deliveries=3, concurrent=True)
        await env.app.processor.poll_open()
        message = await env.tg.wait_for_text(BUYER, "does not cover the full")
        assert "1.980000 USDT" in message["plain"]
        order = await env.order(order_id)
        assert order.partial_seen and order.expires_at is not None
        assert order.expires_at.strftime("%Y-%m-%d %H:%M UTC") in message["plain"]
        await _settle(env)
        assert len(_texts(await env.tg.messages(BUYER), "does not cover")) == 1
        assert (await _kinds(env, order_id)).count("payment_partial") == 1
        pressed = await env.tg.press(BUYER, "🔄 Check payment")
        answer = await env.tg.callback_answer(pressed["callback_query_id"])
        assert "No payment yet" not in answer["text"]
        assert "doesn't cover the full 1.980000 USDT" in answer["text"]


async def test_unpaid_callback_after_delivery_adds_nothing(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        first = await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        order = await env.order(order_id)
        stale = {**first["payment"], "isPaid": False}
        await env.kx.resend(order.provider_payment_id, body_override=stale, deliveries=3)
        await _settle(env)
        order = await env.order(order_id)
        assert order.status == "delivered" and not order.partial_seen
        kinds = await _kinds(env, order_id)
        assert "payment_partial" not in kinds and "payment_unexpected" not in kinds
        assert _texts(await env.tg.messages(BUYER), "does not cover") == []


async def test_overpayment_after_delivery_is_alerted_once(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.kx.set_options(report_received=True)
        order_id = await env.buy(BUYER)
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        await env.pay(order_id, amount=Decimal("0.50"), deliveries=3, concurrent=True)
        order = await env.order(order_id)
        await env.kx.resend(order.provider_payment_id, deliveries=2)  # a redelivery
        alert = await env.tg.wait_for_text(env.admin_chat, "received more than invoiced")
        assert f"Order #{order_id}" in alert["plain"]
        assert "2.480000 of 1.980000 USDT" in alert["plain"]
        assert "0.500000 USDT extra" in alert["plain"]
        told = await env.tg.wait_for_text(BUYER, "the operator will contact you")
        assert "0.500000 USDT" in told["plain"]
        await _settle(env)
        assert len(_texts(await env.tg.messages(env.admin_chat), "more than invoiced")) == 1
        assert len(_texts(await env.tg.messages(BUYER), "operator will contact")) == 1
        order = await env.order(order_id)
        assert order.status == "delivered" and order.attention == "overpaid"
        events = [e for e in await env.events(order_id) if e.kind == "payment_unexpected"]
        assert len(events) == 1 and events[0].detail is not None
        assert events[0].detail["situation"] == "overpaid"
        assert Decimal(events[0].detail["received"]) == Decimal("2.48")
        keys = [k for k in await env.orc.keys() if not k["deleted"]]
        assert [k["limit"] for k in keys] == [Decimal("1.65")]  # no second credit


async def test_full_payment_after_refund_is_flagged_not_delivered(tmp_path: Path) -> None:
    """The operator refunded a partial payment by hand, then the buyer paid the rest:
    the money is the buyer's. No credit is granted automatically; the order is flagged,
    the admin group alerted with the crypto, the buyer told, each exactly once."""
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.pay(order_id, amount=Decimal("1.00"))
        await env.age_order(order_id)
        await env.app.processor.expire_overdue()
        await ask(env, f"/refund {order_id} sent 1 USDT back", "marked refunded")
        await env.pay(order_id, deliveries=3, concurrent=True)  # the rest: now fully paid
        await env.app.processor.poll_open()
        alert = await env.tg.wait_for_text(env.admin_chat, "the full payment arrived afterwards")
        assert f"Order #{order_id}" in alert["plain"] and "1.980000 USDT_TRC20" in alert["plain"]
        await env.tg.wait_for_text(BUYER, "the operator will contact you")
        await _settle(env)
        order = await env.order(order_id)
        assert order.status == "refunded" and order.attention == "paid_after_close"
        events = [e for e in await env.events(order_id) if e.kind == "payment_unexpected"]
        assert len(events) == 1 and events[0].from_status == "refunded"
        assert len(_texts(await env.tg.messages(env.admin_chat), "arrived afterwards")) == 1
        assert len(_texts(await env.tg.messages(BUYER), "operator will contact")) == 1
        assert [k for k in await env.orc.keys() if not k["deleted"]] == []
        view = await ask(env, f"/order {order_id}", f"Order #{order_id}")
        assert "Needs the operator" in view["plain"]


async def test_partial_transfer_after_expiry_is_alerted_once(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.age_order(order_id)
        await env.app.processor.expire_overdue()
        await env.tg.wait_for_text(BUYER, "expired without payment")
        await env.pay(order_id, amount=Decimal("1.00"), deliveries=3, concurrent=True)
        await env.app.processor.poll_open()
        alert = await env.tg.wait_for_text(env.admin_chat, "part of a payment arrived afterwards")
        assert f"Order #{order_id}" in alert["plain"]
        await env.tg.wait_for_text(BUYER, "the operator will contact you")
        await _settle(env)
        assert len(_texts(await env.tg.messages(env.admin_chat), "arrived afterwards")) == 1
        assert len(_texts(await env.tg.messages(BUYER), "operator will contact")) == 1
        order = await env.order(order_id)
        assert order.status == "expired" and order.partial_seen
        assert order.attention == "partial_after_close"
        # The rest arrives: a full late payment is still honoured (SPEC §3).
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)


async def test_check_payment_asks_the_provider_at_most_once_per_interval(
    tmp_path: Path,
) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        before = await _polls(env)
        screen = next(
            m for m in reversed(await env.tg.messages(BUYER)) if m.get("photo") and m["buttons"]
        )
        data = screen["buttons"][0][0]["callback_data"]
        taps = await asyncio.gather(
            *(env.tg.forge_callback(BUYER, screen["message_id"], data) for _ in range(5))
        )
        answers = [await env.tg.callback_answer(tap["callback_query_id"]) for tap in taps]
        for _ in range(3):
            pressed = await env.tg.press(BUYER, "🔄 Check payment")
            answers.append(await env.tg.callback_answer(pressed["callback_query_id"]))
        assert all("No payment yet" in a["text"] for a in answers)
        assert await _polls(env) - before == 1
        # Ten seconds later the provider is asked again.
        await env.update_order(order_id, checked_at=utcnow() - timedelta(seconds=11))
        pressed = await env.tg.press(BUYER, "🔄 Check payment")
        await env.tg.callback_answer(pressed["callback_query_id"])
        assert await _polls(env) - before == 2
        assert env.app.settings.check_payment_throttle_seconds == 10  # the default


async def test_partial_after_cancel_in_btc_keeps_the_providers_precision(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.kx.set_options(report_received=True)
        order_id = await env.buy(BUYER, asset="BTC")
        order = await env.order(order_id)
        assert order.crypto_amount == Decimal("0.00003047")  # $1.98 at $65,000, rounded up
        await env.tg.press(BUYER, "❌ Cancel order")
        await env.wait_status(order_id, "cancelled")
        await env.pay(order_id, amount=Decimal("0.00001"), deliveries=2, concurrent=True)
        alert = await env.tg.wait_for_text(env.admin_chat, "part of a payment arrived afterwards")
        assert "0.00001000 BTC of 0.00003047 BTC" in alert["plain"]
        assert "is cancelled" in alert["plain"]
        told = await env.tg.wait_for_text(BUYER, "the operator will contact you")
        assert "0.00001000 BTC" in told["plain"]
        await _settle(env)
        assert len(_texts(await env.tg.messages(env.admin_chat), "arrived afterwards")) == 1
        view = await ask(env, f"/order {order_id}", f"Order #{order_id}")
        assert "Received 0.00001000 of 0.00003047 BTC (missing 0.00002047)" in view["plain"]
        assert "Needs the operator" in view["plain"]
