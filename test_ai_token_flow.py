"""The end-to-end flow: a buyer in Telegram → quote → crypto invoice → payment → key.

Real dispatcher, database, HTTP server and scheduler against the emulators over
loopback. Assertions are on what the buyer saw, what the database holds and what the
emulated providers received.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from core.clock import utcnow
from processing.scheduler import JobIntervals
from tests.harness import IDLE, running_env

BUYER = 424242


async def test_usdt_package_purchase_from_start_to_delivered_key(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        packages = await env.open_packages(BUYER)
        labels = [b["text"] for row in packages["buttons"] for b in row]
        # SPEC §1 example: completion $15 per million tokens (claude-3-sonnet, the default).
        assert labels[:4] == [
            "Starter · 110,000 tokens · $1.98",
            "Standard · 270,000 tokens · $4.86",
            "Professional · 550,000 tokens · $9.90",
            "Enterprise · 1,100,000 tokens · $19.80",
        ]
        assert "✏️ Custom amount" in labels
        assert any(label.startswith("🧠 Model: ") for label in labels)

        await env.choose_package(BUYER, "Starter")
        await env.tg.press(BUYER, "USDT")
        quote = await env.tg.wait_for_text(BUYER, "Your quote")
        for fragment in ("110,000", "Base cost: $1.65", "Markup (20%): $0.33", "Total: $1.98"):
            assert fragment in quote["plain"], quote["plain"]
        await env.tg.press(BUYER, "✅ Confirm order")
        screen = await env.tg.wait_for(BUYER, lambda m: bool(m.get("photo")))
        caption = screen["plain"]
        order = (await env.orders(BUYER))[0]
        assert order.status == "awaiting_payment"
        assert order.total_usd == Decimal("1.98") and order.base_usd == Decimal("1.65")
        assert order.markup_usd == Decimal("0.33") and order.currency == "USD"
        assert order.crypto_code == "USDT_TRC20" and order.asset == "USDT"
        assert order.crypto_amount == Decimal("1.98")
        assert f"Order #{order.id}" in caption and order.pay_address in caption
        assert "1.980000 USDT" in caption and "TRON (TRC-20)" in caption
        buttons = [b["text"] for row in screen["buttons"] for b in row]
        assert buttons == ["🔄 Check payment", "❌ Cancel order"]
        qr = await env.tg.file_bytes(screen["photo_file_id"])
        assert qr.startswith(b"\x89PNG")

        # What the provider received: a USD invoice with our callback and a secret.
        created = [r for r in await env.kx.requests() if r["method"] == "POST"]
        assert len(created) == 1
        body = created[0]["body"]
        assert body["fiatAmount"] == Decimal("1.98") and body["fiatCurrency"] == "USD"
        assert body["cryptoCurrency"] == "USDT_TRC20" and body["callbackSecret"]
        assert body["callbackUrl"].endswith("/payments/kryptoexpress")

        paid = await env.pay(order.id)
        assert [d["status"] for d in paid["deliveries"]] == [200]
        await env.tg.wait_for_text(BUYER, f"Payment received for order #{order.id}")
        delivered = await env.delivered_message(BUYER, order.id)

        keys = [k for k in await env.orc.keys() if not k["deleted"]]
        assert len(keys) == 1
        key = keys[0]
        assert key["name"] == f"tg-{BUYER}"
        assert key["limit"] == Decimal("1.65")  # the base cost exactly, never the total
        assert key["key"] in delivered["text"]  # shown once, in a spoiler
        assert "<tg-spoiler>" in delivered["text"]
        assert "Limit $1.65" in delivered["plain"] and "remaining $1.65" in delivered["plain"]

        stored = await env.api_key(BUYER)
        assert stored is not None and stored.openrouter_hash == key["hash"]
        assert key["key"] not in stored.encrypted_key  # only ever stored encrypted
        assert env.app.vault.decrypt(stored.encrypted_key) == key["key"]
        assert all(key["key"] not in row.text for row in await env.outbox())

        order = await env.order(order.id)
        assert order.status == "delivered"
        kinds = [e.kind for e in await env.events(order.id)]
        assert kinds == [
            "order_created",
            "invoice_created",
            "payment_confirmed",
            "fulfilment_started",
            "key_create_started",
            "delivered",
        ]
        admin = await env.tg.wait_for_text(env.admin_chat, f"Paid: order #{order.id}")
        assert "$1.98" in admin["plain"] and f"user {BUYER}" in admin["plain"]

        # The bot PATCHed an absolute limit and never tried to buy credit itself.
        calls = await env.orc.requests()
        patches = [c for c in calls if c["method"] == "PATCH"]
        assert [c["body"] for c in patches] == [{"limit": Decimal("1.65")}]
        assert not [c for c in calls if "coinbase" in c["path"]]


async def test_btc_purchase(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER, asset="BTC", package="Standard")
        order = await env.order(order_id)
        assert order.crypto_code == "BTC" and order.total_usd == Decimal("4.86")
        # $4.86 at the emulator's $65,000 per BTC, rounded up to 8 places.
        assert order.crypto_amount == Decimal("0.00007477")
        screen = await env.tg.wait_for(BUYER, lambda m: bool(m.get("photo")))
        assert "0.00007477 BTC" in screen["plain"] and "Bitcoin" in screen["plain"]
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        key = next(k for k in await env.orc.keys() if not k["deleted"])
        assert key["limit"] == Decimal("4.05")


async def test_custom_amount(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.open_packages(BUYER)
        await env.tg.press(BUYER, "✏️ Custom amount")
        await env.tg.wait_for_text(BUYER, "How many tokens?")
        await env.tg.send_text(BUYER, "250000")
        await env.tg.wait_for_text(BUYER, "250,000 tokens. How would you like to pay?")
        order_id = await env.quote_and_confirm(BUYER, "USDT")
        order = await env.order(order_id)
        # 250,000 × $0.000015 = $3.75 base; × 1.2 = $4.50.
        assert (order.tokens, order.base_usd, order.total_usd) == (
            250000,
            Decimal("3.75"),
            Decimal("4.50"),
        )
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        assert (await env.order(order_id)).status == "delivered"


async def test_buy_command_with_amount_jumps_to_currency(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.tg.send_text(BUYER, "/buy 5000")
        answer = await env.tg.wait_for_text(BUYER, "Too few tokens")
        assert "54,667" in answer["plain"]  # the smallest valid count is named
        await env.tg.send_text(BUYER, "/buy 100000")
        await env.tg.wait_for_text(BUYER, "100,000 tokens. How would you like to pay?")


async def test_bad_custom_amounts_get_a_reason_and_no_quote(tmp_path: Path) -> None:
    reasons = {
        "abc": "isn't a number",
        "-5": "can't be negative",
        "12.5": "whole numbers",
        "50": "Too few tokens: the smallest order is 54,667 tokens ($1.00)",
        "99999999": "Too many tokens: an order may not exceed $20.00; the largest is "
        "1,110,666 tokens",
    }
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.open_packages(BUYER)
        await env.tg.press(BUYER, "✏️ Custom amount")
        await env.tg.wait_for_text(BUYER, "How many tokens?")
        for text, reason in reasons.items():
            sent = await env.tg.send_text(BUYER, text)
            answer = await env.tg.wait_for(
                BUYER,
                lambda m, after=sent["message_id"]: m["from_bot"] and m["message_id"] > after,
            )
            assert reason in answer["plain"], (text, answer["plain"])
            assert "How many tokens?" in answer["plain"]  # and the question again
        # Nothing was quoted or ordered, and no provider was asked for anything.
        assert await env.orders() == []
        assert not any(
            m["plain"] and "Your quote" in m["plain"] for m in await env.tg.messages(BUYER)
        )
        assert [r for r in await env.kx.requests() if r["method"] == "POST"] == []


async def test_second_order_raises_the_same_key_to_the_sum(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        first = await env.buy(BUYER, package="Starter")
        await env.pay(first)
        await env.delivered_message(BUYER, first)
        second = await env.buy(BUYER, package="Standard", new_chat=False)
        await env.pay(second)
        topup = await env.delivered_message(BUYER, second)
        keys = [k for k in await env.orc.keys() if not k["deleted"]]
        assert len(keys) == 1  # the same key, raised
        assert keys[0]["limit"] == Decimal("1.65") + Decimal("4.05")
        assert keys[0]["key"] not in topup["text"]  # the key is shown only once
        assert "Limit $5.70" in topup["plain"]
        patches = [c["body"]["limit"] for c in await env.orc.requests() if c["method"] == "PATCH"]
        assert patches == [Decimal("1.65"), Decimal("5.70")]  # absolute values


async def test_payment_confirmed_by_polling_alone(tmp_path: Path) -> None:
    intervals = JobIntervals(payment_poll=0.3, expiry=IDLE, fulfilment=IDLE, prices=IDLE)
    async with running_env(tmp_path, intervals=intervals) as env:
        order_id = await env.buy(BUYER)
        result = await env.pay(order_id, callback=False)  # the callback never comes
        assert result["deliveries"] == []
        await env.delivered_message(BUYER, order_id)
        confirmed = [e for e in await env.events(order_id) if e.kind == "payment_confirmed"]
        assert [e.actor for e in confirmed] == ["poll"]


async def test_check_payment_button_confirms(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        pressed = await env.tg.press(BUYER, "🔄 Check payment")
        answer = await env.tg.callback_answer(pressed["callback_query_id"])
        assert "No payment yet" in answer["text"]
        await env.pay(order_id, callback=False)
        # The provider is asked at most once per CHECK_PAYMENT_THROTTLE_SECONDS: let it pass.
        await env.update_order(order_id, checked_at=utcnow() - timedelta(seconds=11))
        pressed = await env.tg.press(BUYER, "🔄 Check payment")
        answer = await env.tg.callback_answer(pressed["callback_query_id"])
        assert "Payment received" in answer["text"] or "delivered" in answer["text"]
        await env.delivered_message(BUYER, order_id)


async def test_awaiting_funds_then_resume(tmp_path: Path) -> None:
    intervals = JobIntervals(
        payment_poll=IDLE, expiry=IDLE, fulfilment=IDLE, prices=IDLE, funds_recheck=0.2
    )
    async with running_env(tmp_path, intervals=intervals) as env:
        await env.orc.set_credits(total_credits=Decimal("1.00"), total_usage=Decimal("0"))
        order_id = await env.buy(BUYER)  # needs $1.65 of credit
        await env.pay(order_id)
        await env.wait_status(order_id, "awaiting_funds")
        alert = await env.tg.wait_for_text(env.admin_chat, f"Order #{order_id} awaits funds")
        assert "Top up OpenRouter by exactly $0.65" in alert["plain"]
        await env.tg.wait_for_text(BUYER, "taking a little longer")
        keys = [k for k in await env.orc.keys() if not k["deleted"]]
        assert all(k["limit"] in (None, Decimal("0")) for k in keys)  # nothing granted yet

        await env.orc.set_credits(total_credits=Decimal("1.65"))
        await env.delivered_message(BUYER, order_id)
        keys = [k for k in await env.orc.keys() if not k["deleted"]]
        assert [k["limit"] for k in keys] == [Decimal("1.65")]
        admin_alerts = [
            m for m in await env.tg.messages(env.admin_chat) if "awaits funds" in (m["plain"] or "")
        ]
        assert len(admin_alerts) == 1  # told once, not on every re-check


async def test_five_concurrent_duplicate_callbacks_deliver_once(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        result = await env.pay(order_id, deliveries=5, concurrent=True)
        assert [d["status"] for d in result["deliveries"]] == [200] * 5
        await env.delivered_message(BUYER, order_id)
        await asyncio.sleep(0.5)  # let any wrongly duplicated work surface
        messages = await env.tg.messages(BUYER)
        assert sum("delivered" in (m["plain"] or "") for m in messages) == 1
        assert sum("Payment received" in (m["plain"] or "") for m in messages) == 1
        kinds = [e.kind for e in await env.events(order_id)]
        assert kinds.count("payment_confirmed") == 1 and kinds.count("delivered") == 1
        keys = [k for k in await env.orc.keys() if not k["deleted"]]
        assert len(keys) == 1 and keys[0]["limit"] == Decimal("1.65")
        posts = [c for c in await env.orc.requests() if c["method"] == "POST"]
        assert len(posts) == 1  # one key created


async def test_forged_and_unsigned_callbacks_are_rejected(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        order = await env.order(order_id)
        unsigned = await env.pay(order_id, signature="none")
        assert unsigned["deliveries"][0]["status"] == 401
        bad = await env.kx.resend(order.provider_payment_id, signature="bad")
        assert all(400 <= d["status"] < 500 for d in bad["deliveries"])
        await asyncio.sleep(0.3)
        assert (await env.order(order_id)).status == "awaiting_payment"
        assert "payment_confirmed" not in [e.kind for e in await env.events(order_id)]
        assert [k for k in await env.orc.keys() if not k["deleted"]] == []
        await env.tg.wait_for_text(env.admin_chat, "Rejected a kryptoexpress callback")
        # The genuine callback still works afterwards.
        await env.kx.resend(order.provider_payment_id)
        await env.delivered_message(BUYER, order_id)


async def test_another_users_button_is_refused(tmp_path: Path) -> None:
    intruder = 777001
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.start_chat(intruder)
        own = await env.tg.last_message(intruder)
        for data in (f"o:cancel:{order_id}", f"o:check:{order_id}", "q:ok:1", "o:cancel:99999"):
            forged = await env.tg.forge_callback(intruder, own["message_id"], data)
            answer = await env.tg.callback_answer(forged["callback_query_id"])
            assert (answer["show_alert"] and "isn't available" in answer["text"]) or (
                "no longer valid" in answer["text"]
            ), answer
        assert (await env.order(order_id)).status == "awaiting_payment"
        assert len(await env.orders()) == 1
