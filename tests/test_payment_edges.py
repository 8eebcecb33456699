"""Payments at the edges: expiry, partial and late payments, cancellations, bad callbacks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
from sqlalchemy import update

from core.clock import utcnow
from db.models import Quote
from tests.harness import running_env

BUYER = 515151


def _sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha512).hexdigest()


async def test_unpaid_invoice_expires_and_the_buyer_is_told(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.app.processor.expire_overdue()  # not overdue yet: nothing happens
        assert (await env.order(order_id)).status == "awaiting_payment"
        await env.age_order(order_id)
        assert await env.app.processor.expire_overdue() == 1
        assert await env.app.processor.expire_overdue() == 0  # safe to run twice
        assert (await env.order(order_id)).status == "expired"
        await env.tg.wait_for_text(BUYER, f"Order #{order_id} expired without payment")
        kinds = [e.kind for e in await env.events(order_id)]
        assert kinds[-1] == "expired" and kinds.count("expired") == 1


async def test_partial_payment_then_expiry_asks_admin_to_refund(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        result = await env.pay(order_id, amount=Decimal("1.00"))  # of 1.98 USDT
        assert result["payment"]["isPaid"] is False
        assert result["deliveries"][0]["status"] == 200
        order = await env.order(order_id)
        assert order.status == "awaiting_payment" and order.partial_seen
        await env.age_order(order_id)
        await env.app.processor.expire_overdue()
        assert (await env.order(order_id)).status == "expired"
        await env.tg.wait_for_text(BUYER, "only part of the amount received")
        alert = await env.tg.wait_for_text(env.admin_chat, f"Order #{order_id}")
        assert "Refund by hand" in alert["plain"] and order.provider_payment_id in alert["plain"]
        assert [k for k in await env.orc.keys() if not k["deleted"]] == []


async def test_partial_then_rest_delivers(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.pay(order_id, amount=Decimal("0.98"))
        assert (await env.order(order_id)).status == "awaiting_payment"
        await env.pay(order_id)  # the rest
        await env.delivered_message(BUYER, order_id)


async def test_full_payment_after_expiry_is_honoured(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.age_order(order_id)
        await env.app.processor.expire_overdue()
        assert (await env.order(order_id)).status == "expired"
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        alert = await env.tg.wait_for_text(env.admin_chat, "Late payment honoured")
        assert "expired → paid" in alert["plain"]
        keys = [k for k in await env.orc.keys() if not k["deleted"]]
        assert [k["limit"] for k in keys] == [Decimal("1.65")]


async def test_cancelled_order_then_paid_anyway_is_honoured(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.tg.press(BUYER, "❌ Cancel order")
        await env.tg.wait_for_text(BUYER, f"Order #{order_id} was cancelled")
        assert (await env.order(order_id)).status == "cancelled"
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)


async def test_signed_callback_that_does_not_match_the_order_is_not_delivered(
    tmp_path: Path,
) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        order = await env.order(order_id)
        current = (await env.kx.payment(order.provider_payment_id))["payment"]
        forged = {**current, "isPaid": True, "fiatAmount": Decimal("0.50")}
        result = await env.kx.resend(order.provider_payment_id, body_override=forged)
        assert result["deliveries"][0]["status"] == 200  # acknowledged, not acted on
        other_currency = {**current, "isPaid": True, "cryptoCurrency": "BTC"}
        await env.kx.resend(order.provider_payment_id, body_override=other_currency)
        await asyncio.sleep(0.3)
        assert (await env.order(order_id)).status == "awaiting_payment"
        kinds = [e.kind for e in await env.events(order_id)]
        assert kinds.count("payment_mismatch") == 2 and "payment_confirmed" not in kinds
        alert = await env.tg.wait_for_text(env.admin_chat, "does not match the order (amount)")
        assert f"#{order_id}" in alert["plain"]
        assert "signed kryptoexpress payment report" in alert["plain"]  # issue 12: the rail
        await env.tg.wait_for_text(env.admin_chat, "does not match the order (crypto_currency)")
        assert [k for k in await env.orc.keys() if not k["deleted"]] == []


async def test_callback_for_unknown_payment_is_acknowledged_and_ignored(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        order = await env.order(order_id)
        current = (await env.kx.payment(order.provider_payment_id))["payment"]
        stranger = {**current, "id": 999999, "hash": "f" * 64, "isPaid": True}
        result = await env.kx.resend(order.provider_payment_id, body_override=stranger)
        assert result["deliveries"][0]["status"] == 200
        assert (await env.order(order_id)).status == "awaiting_payment"


async def test_oversized_malformed_and_replayed_callbacks(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        url = env.app.settings.callback_url("kryptoexpress")
        secret = env.sandbox.callback_secret
        assert url is not None
        async with httpx.AsyncClient(timeout=10) as http:
            big = b'{"pad":"' + b"x" * (70 * 1024) + b'"}'
            response = await http.post(
                url, content=big, headers={"X-Signature": _sign(secret, big)}
            )
            assert response.status_code == 413
            garbage = b"not json at all"
            response = await http.post(
                url, content=garbage, headers={"X-Signature": _sign(secret, garbage)}
            )
            assert response.status_code == 400
            missing = json.dumps({"id": 1}).encode()
            response = await http.post(
                url, content=missing, headers={"X-Signature": _sign(secret, missing)}
            )
            assert response.status_code == 400

            order_id = await env.buy(BUYER)
            paid = await env.pay(order_id)
            body = paid["deliveries"][0]["body"]
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            await env.delivered_message(BUYER, order_id)
            # The same signed body again, later: a replay changes nothing.
            for _ in range(3):
                response = await http.post(
                    url, content=raw, headers={"X-Signature": _sign(secret, raw)}
                )
                assert response.status_code == 200
        await asyncio.sleep(0.3)
        kinds = [e.kind for e in await env.events(order_id)]
        assert kinds.count("payment_confirmed") == 1 and kinds.count("delivered") == 1
        messages = await env.tg.messages(BUYER)
        assert sum("delivered" in (m["plain"] or "") for m in messages) == 1


async def test_callback_route_is_per_provider_and_unknown_ones_are_404(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        settings = env.app.settings
        body = b'{"id": 1}'
        async with httpx.AsyncClient(timeout=10) as http:
            # Unknown, and known but not configured here (not built yet): no such route.
            for name in ("paypal", "cryptopay"):
                url = settings.callback_url(name)
                assert url is not None
                response = await http.post(url, content=body, headers={"X-Signature": "0"})
                assert response.status_code == 404, name
            url = settings.callback_url("kryptoexpress")
            assert url is not None
            response = await http.post(url, content=body, headers={"X-Signature": "0" * 128})
            assert response.status_code == 401
            assert response.json() == {"error": "bad_signature"}


async def test_double_confirm_makes_one_order_and_one_invoice(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.open_packages(BUYER)
        await env.choose_package(BUYER)
        await env.tg.press(BUYER, "USDT")
        quote = await env.tg.wait_for(BUYER, lambda m: "Your quote" in (m["plain"] or ""))
        data = next(
            b["callback_data"]
            for row in quote["buttons"]
            for b in row
            if b["text"] == "✅ Confirm order"
        )
        taps = await asyncio.gather(
            *(env.tg.forge_callback(BUYER, quote["message_id"], data) for _ in range(3))
        )
        for tap in taps:
            await env.tg.callback_answer(tap["callback_query_id"])
        await asyncio.sleep(0.5)
        assert len(await env.orders()) == 1
        assert len([r for r in await env.kx.requests() if r["method"] == "POST"]) == 1


async def test_stale_and_cancelled_quotes_are_refused(tmp_path: Path) -> None:
    async with running_env(tmp_path, quote_ttl_seconds=30) as env:
        await env.start_chat(BUYER)
        await env.open_packages(BUYER)
        await env.choose_package(BUYER)
        await env.tg.press(BUYER, "USDT")
        quote = await env.tg.wait_for(BUYER, lambda m: "Your quote" in (m["plain"] or ""))
        confirm = next(
            b["callback_data"]
            for row in quote["buttons"]
            for b in row
            if b["text"] == "✅ Confirm order"
        )
        await env.tg.press(BUYER, "❌ Cancel")
        await env.tg.wait_for_text(BUYER, "Quote cancelled")
        tap = await env.tg.forge_callback(BUYER, quote["message_id"], confirm)
        answer = await env.tg.callback_answer(tap["callback_query_id"])
        assert "no longer valid" in answer["text"] or "expired" in answer["text"]
        assert await env.orders() == []


async def test_invoice_failure_tells_the_buyer_and_leaves_nothing_open(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.open_packages(BUYER)
        await env.choose_package(BUYER)
        await env.tg.press(BUYER, "USDT")
        await env.tg.wait_for(BUYER, lambda m: "Your quote" in (m["plain"] or ""))
        await env.kx.add_fault(path="/api/payment", method="POST", status=503, count=None)
        await env.tg.press(BUYER, "✅ Confirm order")
        await env.tg.wait_for_text(BUYER, "couldn't create an invoice")
        (order,) = await env.orders()
        assert order.status == "cancelled" and order.provider_payment_id is None
        assert [e.kind for e in await env.events(order.id)] == ["order_created", "invoice_failed"]
        alert = await env.tg.wait_for_text(env.admin_chat, "No payment provider could create")
        assert f"order #{order.id}" in alert["plain"] and "503" in alert["plain"]


async def test_expired_quote_is_refused_with_a_reason(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.open_packages(BUYER)
        await env.choose_package(BUYER)
        await env.tg.press(BUYER, "USDT")
        await env.tg.wait_for(BUYER, lambda m: "Your quote" in (m["plain"] or ""))
        async with env.app.sessions() as session, session.begin():
            await session.execute(update(Quote).values(expires_at=utcnow() - timedelta(seconds=1)))
        pressed = await env.tg.press(BUYER, "✅ Confirm order")
        answer = await env.tg.callback_answer(pressed["callback_query_id"])
        assert answer["show_alert"] and "expired" in answer["text"]
        assert await env.orders() == []
        assert [r for r in await env.kx.requests() if r["method"] == "POST"] == []


async def test_confirm_redelivered_after_a_crash_shows_the_same_order_again(
    tmp_path: Path,
) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        quote_id = (await env.order(order_id)).quote_id
        (quote,) = [m for m in await env.tg.messages(BUYER) if "Your quote" in (m["plain"] or "")]
        # Telegram redelivers the same tap (the process died before confirming the update).
        photos_seen = [m for m in await env.tg.messages(BUYER) if m.get("photo")]
        tap = await env.tg.forge_callback(BUYER, quote["message_id"], f"q:ok:{quote_id}")
        await env.tg.callback_answer(tap["callback_query_id"])

        def photos(messages: list[dict]) -> list[dict]:
            return [m for m in messages if m.get("photo")]

        await env.tg.wait_for(
            BUYER,
            lambda m: bool(m.get("photo")) and m["message_id"] > (photos_seen[0]["message_id"]),
        )
        assert all(f"Order #{order_id}" in m["plain"] for m in photos(await env.tg.messages(BUYER)))
        assert len(await env.orders()) == 1
        assert len([r for r in await env.kx.requests() if r["method"] == "POST"]) == 1
