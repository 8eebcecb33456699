"""Buying through Crypto Pay, the second rail (issue 12), end to end: the real bot, its
database and HTTP server against the Telegram, OpenRouter, KryptoExpress and Crypto Pay
emulators. KryptoExpress fails invoice creation, so the Confirm falls back to Crypto Pay
within the same press; the buyer pays in @CryptoBot (the emulator), and the payment is
confirmed by the signed webhook alone, or by polling alone."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from sandbox.provider_control import CryptoPayControl
from sandbox.runner import ADMIN_ID
from tests.harness import Env, running_env

BUYER = 515151
RAILS = ["kryptoexpress", "cryptopay"]


@asynccontextmanager
async def rails(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[Env, CryptoPayControl]]:
    async with (
        running_env(tmp_path, payment_providers=RAILS, **options) as env,
        CryptoPayControl(env.sandbox.cryptopay_url) as cp,
    ):
        yield env, cp


async def _confirm_with_kryptoexpress_down(env: Env) -> tuple[int, dict[str, Any]]:
    """The buyer confirms while KryptoExpress refuses to create invoices; returns the
    order id and the invoice message."""
    await env.start_chat(BUYER)
    await env.open_packages(BUYER)
    await env.choose_package(BUYER)
    await env.tg.press(BUYER, "USDT")
    await env.tg.wait_for(BUYER, lambda m: "Your quote" in (m["plain"] or ""))
    await env.kx.add_fault(path="/api/payment", method="POST", status=503, count=None)
    await env.tg.press(BUYER, "✅ Confirm order")
    screen = await env.tg.wait_for_text(BUYER, "with @CryptoBot")
    match = re.search(r"Order #(\d+)", screen["plain"])
    assert match, screen
    return int(match.group(1)), screen


async def _invoice_of(cp: CryptoPayControl, order_id: int) -> dict[str, Any]:
    (invoice,) = [i for i in await cp.invoices() if i["payload"] == f"order:{order_id}"]
    return invoice


async def test_fallback_to_cryptopay_confirmed_by_the_webhook_alone(tmp_path: Path) -> None:
    async with rails(tmp_path) as (env, cp):
        order_id, screen = await _confirm_with_kryptoexpress_down(env)
        order = await env.order(order_id)
        assert order.provider == "cryptopay" and order.status == "awaiting_payment"
        invoice = await _invoice_of(cp, order_id)
        # What was asked of Crypto Pay: USD, the order's total, the buyer's asset only.
        assert (invoice["currency_type"], invoice["fiat"]) == ("fiat", "USD")
        assert invoice["amount"] == f"{order.total_usd:f}"
        assert invoice["accepted_assets"] in (["USDT"], "USDT")
        # One invoice, no address and no QR: a URL button to @CryptoBot beside the others.
        buttons = [b for row in screen["buttons"] for b in row]
        assert buttons[0]["url"] == invoice["bot_invoice_url"]
        assert [b["text"] for b in buttons[1:]] == ["🔄 Check payment", "❌ Cancel order"]
        assert not screen.get("photo") and "0 USDT" not in screen["plain"]
        await env.tg.wait_for_text(env.admin_chat, "kryptoexpress")

        paid = await cp.pay(invoice["invoice_id"], "USDT")
        assert [d["status"] for d in paid["deliveries"]] == [200]
        await env.delivered_message(BUYER, order_id)
        order = await env.wait_status(order_id, "delivered")
        # The crypto side of a USD invoice is what the buyer paid, in the asset they chose.
        assert order.crypto_amount == Decimal(paid["invoice"]["paid_amount"]) > 0
        assert paid["invoice"]["paid_asset"] == "USDT"
        kinds = [e.kind for e in await env.events(order_id)]
        assert kinds.count("payment_confirmed") == 1

        # The same webhook again (Crypto Pay retries): nothing is delivered twice.
        again = await cp.send_webhook(invoice["invoice_id"], deliveries=2)
        assert all(d["status"] == 200 for d in again["deliveries"])
        assert [e.kind for e in await env.events(order_id)].count("delivered") == 1
        texts = [m["plain"] or "" for m in await env.tg.messages(BUYER) if m["from_bot"]]
        assert sum("Payment received" in t for t in texts) == 1

        # The admins' views name the rail (issue 12 item 7): /order and /stats.
        await env.tg.send_text(ADMIN_ID, f"/order {order_id}", chat_id=env.admin_chat)
        await env.tg.wait_for_text(
            env.admin_chat, f"Provider: cryptopay · payment {invoice['invoice_id']}"
        )
        await env.tg.send_text(ADMIN_ID, "/stats", chat_id=env.admin_chat)
        stats = await env.tg.wait_for_text(env.admin_chat, "Paid by provider:")
        assert f"Paid by provider: cryptopay 1 (${order.total_usd})" in stats["plain"], stats


async def test_cryptopay_payment_confirmed_by_polling_alone(tmp_path: Path) -> None:
    async with rails(tmp_path) as (env, cp):
        order_id, _ = await _confirm_with_kryptoexpress_down(env)
        invoice = await _invoice_of(cp, order_id)
        await cp.pay(invoice["invoice_id"], "USDT", webhook=False)
        assert await env.app.processor.poll_open() >= 1
        await env.delivered_message(BUYER, order_id)
        events = await env.events(order_id)
        confirmed = next(e for e in events if e.kind == "payment_confirmed")
        assert "poll" in (confirmed.actor or ""), confirmed.actor


async def test_forged_and_unsigned_webhooks_are_refused_and_change_nothing(
    tmp_path: Path,
) -> None:
    async with rails(tmp_path) as (env, cp):
        order_id, _ = await _confirm_with_kryptoexpress_down(env)
        invoice = await _invoice_of(cp, order_id)
        paid = await cp.pay(invoice["invoice_id"], "USDT", webhook=False)
        for signature in ("bad", "none"):
            sent = await cp.send_webhook(invoice["invoice_id"], signature=signature)
            # Refused every time Crypto Pay retries it.
            assert {d["status"] for d in sent["deliveries"]} == {401}
        # A body that names our order but was never signed by Crypto Pay.
        url = f"{env.app.settings.public_base_url}/payments/cryptopay"
        async with httpx.AsyncClient() as client:
            forged = await client.post(
                url,
                json={"update_id": 1, "update_type": "invoice_paid", "payload": paid["invoice"]},
                headers={"crypto-pay-api-signature": "0" * 64},
            )
        assert forged.status_code == 401
        order = await env.order(order_id)
        assert order.status == "awaiting_payment"
        assert "payment_confirmed" not in [e.kind for e in await env.events(order_id)]


async def test_a_failing_provider_cools_down_then_is_tried_again(tmp_path: Path) -> None:
    """Three failed invoice creations in a row put KryptoExpress last for the cool-down:
    the next invoice goes straight to Crypto Pay (no KryptoExpress call, no wait on its
    failures), /balance says so, and after the cool-down KryptoExpress is asked first."""
    async with running_env(
        tmp_path,
        payment_providers=RAILS,
        provider_failure_threshold=3,
        provider_cooldown_seconds=2,
    ) as env:
        gateway = env.app.gateway
        await env.kx.add_fault(path="/api/payment", method="POST", status=503, count=None)

        def kx_creates(requests: list[dict[str, Any]]) -> int:
            return sum(1 for r in requests if r["method"] == "POST" and r["path"] == "/api/payment")

        for order_id in (9001, 9002, 9003):
            invoice, failures = await gateway.create_invoice(
                order_id=order_id, amount_usd=Decimal("1.98"), asset="USDT"
            )
            assert invoice.provider == "cryptopay" and failures[0].startswith("kryptoexpress")
        tried = kx_creates(await env.kx.requests())
        invoice, failures = await gateway.create_invoice(
            order_id=9004, amount_usd=Decimal("1.98"), asset="USDT"
        )
        assert invoice.provider == "cryptopay" and failures == []
        assert kx_creates(await env.kx.requests()) == tried  # skipped while cooling

        await env.tg.send_text(ADMIN_ID, "/balance")
        shown = await env.tg.wait_for_text(ADMIN_ID, "Payment providers")
        assert "kryptoexpress: ⏸ tried last until" in shown["plain"]
        assert "failed in a row: 3" in shown["plain"] and "503" in shown["plain"]
        assert "cryptopay: ✅ in use" in shown["plain"]

        await asyncio.sleep(2.1)
        await env.kx.clear_faults()
        invoice, failures = await gateway.create_invoice(
            order_id=9005, amount_usd=Decimal("1.98"), asset="USDT"
        )
        assert invoice.provider == "kryptoexpress" and failures == []
        assert [s.failures for s in env.app.admin.provider_states()] == [0, 0]


async def test_the_currency_step_offers_every_rails_assets_routed_to_one_that_takes_them(
    tmp_path: Path,
) -> None:
    """USDT and BTC (both rails), TON and the rest (Crypto Pay only): a TON order goes to
    Crypto Pay with no KryptoExpress call and no fallback alert (nothing failed)."""
    async with rails(tmp_path) as (env, cp):
        await env.start_chat(BUYER)
        await env.open_packages(BUYER)
        await env.tg.press(BUYER, "Starter", match="prefix")
        step = await env.tg.wait_for(BUYER, lambda m: _asset_buttons(m) != [])
        assert _asset_buttons(step) == ["USDT", "BTC", "TON", "ETH", "LTC", "USDC"]
        await env.tg.press(BUYER, "TON")
        quote = await env.tg.wait_for(BUYER, lambda m: "Your quote" in (m["plain"] or ""))
        assert "TON" in quote["plain"]
        await env.tg.press(BUYER, "✅ Confirm order")
        screen = await env.tg.wait_for_text(BUYER, "with @CryptoBot")
        order_id = int(re.search(r"Order #(\d+)", screen["plain"]).group(1))  # type: ignore[union-attr]
        assert (await env.order(order_id)).provider == "cryptopay"
        invoice = await _invoice_of(cp, order_id)
        assert invoice["accepted_assets"] in (["TON"], "TON")
        assert not [r for r in await env.kx.requests() if r["method"] == "POST"]
        await cp.pay(invoice["invoice_id"], "TON")
        await env.delivered_message(BUYER, order_id)
        admin = [m["plain"] or "" for m in await env.tg.messages(env.admin_chat)]
        assert not any("fell back" in text or "failed" in text for text in admin), admin

    # KryptoExpress alone: USDT and BTC only, as before.
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.open_packages(BUYER)
        await env.tg.press(BUYER, "Starter", match="prefix")
        step = await env.tg.wait_for(BUYER, lambda m: _asset_buttons(m) != [])
        assert _asset_buttons(step) == ["USDT", "BTC"]


def _asset_buttons(message: dict[str, Any]) -> list[str]:
    names = {"USDT", "BTC", "TON", "ETH", "LTC", "USDC"}
    return [b["text"] for row in message.get("buttons") or [] for b in row if b["text"] in names]
