"""The web chat's wallet with both rails (issue 12): a buyer who picks an asset only Crypto
Pay takes (TON) gets a Crypto Pay invoice, the wallet lists it beside KryptoExpress ones
and pays it in the buyer's asset through the Crypto Pay emulator, whose signed
``invoice_paid`` webhook reaches the bot. Driven through the web chat's HTTP API, as the
page does; the browser test covers the page itself."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from sandbox.provider_control import CryptoPayControl
from sandbox.runner import SANDBOX_PAYMENT_PROVIDERS
from sandbox.webchat import BUYERS, WebChat
from tests.harness import Env, running_env

ALICE, BORIS = list(BUYERS)


@asynccontextmanager
async def web_api(tmp_path: Path) -> AsyncIterator[tuple[Env, httpx.AsyncClient, CryptoPayControl]]:
    # The rails exactly as `python run.py --sandbox` configures them.
    async with (
        running_env(tmp_path, payment_providers=SANDBOX_PAYMENT_PROVIDERS) as env,
        CryptoPayControl(env.sandbox.cryptopay_url) as cp,
    ):
        webchat = WebChat(env.sandbox, env.app, port=0)
        url = await webchat.start()
        try:
            async with httpx.AsyncClient(base_url=url, timeout=20) as client:
                yield env, client, cp
        finally:
            await webchat.stop()


async def _press(env: Env, client: httpx.AsyncClient, buyer: int, label: str) -> None:
    """A tap on the page: the newest bot message with the button, pressed through /api."""

    def has(m: dict[str, Any]) -> bool:
        return any(b["text"].startswith(label) for row in m.get("buttons") or [] for b in row)

    message = await env.tg.wait_for(buyer, lambda m: bool(m["from_bot"]) and has(m))
    button = next(b for row in message["buttons"] for b in row if b["text"].startswith(label))
    answer = await client.post(
        "/api/press",
        json={
            "chat_id": buyer,
            "message_id": message["message_id"],
            "data": button["callback_data"],
        },
    )
    assert answer.status_code == 200 and "error" not in answer.json(), answer.text


async def _buy_via_page(env: Env, client: httpx.AsyncClient, buyer: int, asset: str) -> int:
    sent = await client.post("/api/send", json={"buyer": buyer, "text": "/start"})
    assert sent.status_code == 200, sent.text
    await _press(env, client, buyer, "🤖 AI Tokens")
    await _press(env, client, buyer, "Starter")
    await _press(env, client, buyer, asset)
    await env.tg.wait_for_text(buyer, "Your quote")
    before = max(m["message_id"] for m in await env.tg.messages(buyer))
    await _press(env, client, buyer, "✅ Confirm order")
    screen = await env.tg.wait_for(
        buyer,
        lambda m: m["message_id"] > before and "Order #" in (m["plain"] or "") and _has_pay(m),
    )
    return int(re.search(r"Order #(\d+)", screen["plain"]).group(1))  # type: ignore[union-attr]


def _has_pay(message: dict[str, Any]) -> bool:
    labels = [b["text"] for row in message.get("buttons") or [] for b in row]
    return "🔄 Check payment" in labels


async def _wallet(client: httpx.AsyncClient, buyer: int) -> list[dict[str, Any]]:
    answer = await client.get("/api/panels", params={"buyer": buyer})
    assert answer.status_code == 200, answer.text
    wallet: list[dict[str, Any]] = answer.json()["wallet"]
    return wallet


async def test_wallet_lists_and_pays_a_crypto_pay_invoice_in_ton(tmp_path: Path) -> None:
    async with web_api(tmp_path) as (env, client, cp):
        order_id = await _buy_via_page(env, client, ALICE, "TON")
        order = await env.order(order_id)
        assert order.provider == "cryptopay" and order.status == "awaiting_payment"

        (card,) = await _wallet(client, ALICE)
        assert card["provider"] == "cryptopay" and card["order_id"] == order_id
        assert card["payment_id"] == int(order.provider_payment_id or 0)
        assert card["status"] == "awaiting_payment" and not card["paid"]
        assert card["assets"] == ["TON"] and card["fiat"] == f"{order.total_usd:.2f}"
        assert await _wallet(client, BORIS) == []

        # Not the buyer's invoice, an asset the invoice does not take, an unknown action:
        # refused, and nothing is paid.
        base = f"/api/wallet/cryptopay/{card['payment_id']}"
        other = await client.post(f"{base}/pay", params={"buyer": BORIS}, json={"asset": "TON"})
        assert other.status_code == 400
        wrong = await client.post(f"{base}/pay", params={"buyer": ALICE}, json={"asset": "BTC"})
        assert wrong.status_code == 400 and "TON" in wrong.text
        bogus = await client.post(f"{base}/pay_half", params={"buyer": ALICE})
        assert bogus.status_code == 400
        assert (await cp.invoice(card["payment_id"]))["status"] == "active"

        paid = await client.post(f"{base}/pay", params={"buyer": ALICE}, json={"asset": "TON"})
        assert paid.status_code == 200, paid.text

        # What the buyer saw, what the DB holds, what the emulator recorded.
        await env.delivered_message(ALICE, order_id)
        order = await env.wait_status(order_id, "delivered")
        invoice = await cp.invoice(card["payment_id"])
        assert invoice["status"] == "paid" and invoice["paid_asset"] == "TON"
        assert invoice["payload"] == f"order:{order_id}"
        assert order.crypto_amount == Decimal(invoice["paid_amount"]) > 0
        assert [d["status"] for d in await cp.deliveries()] == [200]
        (card,) = await _wallet(client, ALICE)
        assert card["paid"] and card["status"] == "delivered"
        assert card["currency"] == "TON" and card["amount"] == invoice["paid_amount"]


async def test_wallet_lets_a_crypto_pay_invoice_expire_beside_a_kryptoexpress_one(
    tmp_path: Path,
) -> None:
    async with web_api(tmp_path) as (env, client, cp):
        kx_order = await _buy_via_page(env, client, ALICE, "USDT")
        cp_order = await _buy_via_page(env, client, ALICE, "TON")
        cards = await _wallet(client, ALICE)
        # Newest first, each with its rail; USDT stays with KryptoExpress (asked first).
        assert [(c["order_id"], c["provider"]) for c in cards] == [
            (cp_order, "cryptopay"),
            (kx_order, "kryptoexpress"),
        ]
        crypto_pay = cards[0]
        expired = await client.post(
            f"/api/wallet/cryptopay/{crypto_pay['payment_id']}/expire", params={"buyer": ALICE}
        )
        assert expired.status_code == 200, expired.text
        assert (await env.order(cp_order)).status == "expired"
        assert (await cp.invoice(crypto_pay["payment_id"]))["status"] == "expired"
        assert (await env.order(kx_order)).status == "awaiting_payment"
        late = await client.post(
            f"/api/wallet/cryptopay/{crypto_pay['payment_id']}/pay",
            params={"buyer": ALICE},
            json={"asset": "TON"},
        )
        assert late.status_code == 400
        cards = await _wallet(client, ALICE)
        assert cards[0]["expired"] and cards[0]["status"] == "expired"

        # The KryptoExpress invoice pays through its own rail's route, and only there.
        kx_card = cards[1]
        for rail in ("cryptopay", "bitpay"):
            refused = await client.post(
                f"/api/wallet/{rail}/{kx_card['payment_id']}/pay", params={"buyer": ALICE}
            )
            assert refused.status_code == 400, refused.text
        paid = await client.post(
            f"/api/wallet/kryptoexpress/{kx_card['payment_id']}/pay_full", params={"buyer": ALICE}
        )
        assert paid.status_code == 200, paid.text
        await env.delivered_message(ALICE, kx_order)
        assert (await env.order(kx_order)).status == "delivered"
