"""The Crypto Pay client against the emulator over loopback HTTP."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
from aiohttp import web

from core.jsonutil import dumps, loads
from sandbox.common import Served
from sandbox.cryptopay import CryptoPayEmulator
from sandbox.provider_control import CryptoPayControl
from services.errors import CallbackRejected, CryptoPayError
from services.payments.cryptopay import (
    MAINNET_URL,
    TESTNET_URL,
    CryptoPayClient,
    CryptoPayInvoice,
)

TOKEN = "12345:AAzQcZWQqQAbsfgPnOLr4FuBc4bQGKqfXyL"
USER = 777001


@dataclass
class Receiver:
    calls: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((await request.read(), dict(request.headers)))
        return web.json_response({"ok": True})


@dataclass
class Env:
    emulator: CryptoPayEmulator
    client: CryptoPayClient
    control: CryptoPayControl
    receiver: Receiver
    url: str

    async def invoice(self, amount: str = "19.80", **overrides: Any) -> CryptoPayInvoice:
        params: dict[str, Any] = {
            "amount_usd": Decimal(amount),
            "accepted_assets": ["USDT", "TON", "BTC"],
            "payload": "order:42",
            "expires_in": 900,
        }
        return await self.client.create_invoice(**(params | overrides))

    async def calls(self, path: str) -> list[dict[str, Any]]:
        return [r for r in await self.control.requests() if r["path"] == path]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    receiver = Receiver()
    receiver_app = web.Application()
    receiver_app.router.add_post("/payments/cryptopay", receiver.handle)
    receiver_served = Served(receiver_app)
    hook = await receiver_served.start() + "/payments/cryptopay"
    emulator = CryptoPayEmulator(TOKEN, webhook_url=hook, webhook_retry_delays=(0,), seed=5)
    served = Served(emulator.app)
    url = await served.start()
    client = CryptoPayClient(
        TOKEN, base_url=url + "/api", timeout=0.5, attempts=3, backoff=0.01, page_size=2
    )
    async with CryptoPayControl(url, timeout=10) as control:
        yield Env(emulator, client, control, receiver, url)
    await client.aclose()
    await served.stop()
    await receiver_served.stop()


async def test_network_base_urls_and_token_header() -> None:
    assert MAINNET_URL == "https://pay.crypt.bot/api"
    assert TESTNET_URL == "https://testnet-pay.crypt.bot/api"
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        result = {"app_id": 1, "name": "x", "payment_processing_bot_username": "CryptoBot"}
        return httpx.Response(200, content=dumps({"ok": True, "result": result}))

    for base in (MAINNET_URL, TESTNET_URL):
        client = CryptoPayClient(TOKEN, base_url=base, transport=httpx.MockTransport(answer))
        assert (await client.get_me()).app_id == 1
        await client.aclose()
    assert [str(r.url) for r in seen] == [
        "https://pay.crypt.bot/api/getMe",
        "https://testnet-pay.crypt.bot/api/getMe",
    ]
    assert all(r.headers["Crypto-Pay-API-Token"] == TOKEN for r in seen)


async def test_get_me_and_balance(env: Env) -> None:
    me = await env.client.get_me()
    assert (me.app_id, me.payment_processing_bot_username) == (4242, "CryptoTestnetBot")
    await env.control.set_balances({"USDT": Decimal("12.5"), "BTC": Decimal("0.00012345")})
    balance = await env.client.get_balance()
    assert balance["USDT"].available == Decimal("12.5")
    assert balance["BTC"].available == Decimal("0.00012345")
    assert all(isinstance(b.available, Decimal) and b.onhold == 0 for b in balance.values())
    await env.control.set_rates({"BTC": Decimal("70000.12")})
    rates = await env.client.get_usd_rates()
    assert rates["BTC"] == Decimal("70000.12") and rates["USDT"] == 1
    assert all(type(rate) is Decimal for rate in rates.values())


async def test_create_poll_and_paid_status(env: Env) -> None:
    invoice = await env.invoice()
    assert invoice.status == "active" and invoice.amount == Decimal("19.80")
    assert (invoice.currency_type, invoice.fiat, invoice.payload) == ("fiat", "USD", "order:42")
    assert invoice.accepted_assets == ("USDT", "TON", "BTC")
    assert invoice.bot_invoice_url.startswith("https://t.me/CryptoTestnetBot?start=IV")
    [sent] = await env.calls("/api/createInvoice")
    assert sent["method"] == "POST"
    assert sent["body"] == {
        "currency_type": "fiat",
        "fiat": "USD",
        "amount": "19.80",  # a string, never a float
        "accepted_assets": "USDT,TON,BTC",
        "payload": "order:42",
        "expires_in": 900,
        "allow_comments": False,
    }
    shown = invoice.to_invoice("USDT")
    assert (shown.provider, shown.payment_id, shown.payment_hash) == (
        "cryptopay",
        str(invoice.invoice_id),
        invoice.hash,
    )
    assert shown.address == invoice.bot_invoice_url and shown.expires_at == invoice.expires_at
    assert shown.raw["mini_app_invoice_url"] and shown.raw["web_app_invoice_url"]

    [polled] = await env.client.get_invoices([invoice.invoice_id])
    assert polled.to_status().is_paid is False
    await env.control.pay(invoice.invoice_id, "BTC", webhook=False)
    [polled] = await env.client.get_invoices([invoice.invoice_id])
    status = polled.to_status()
    assert status.provider == "cryptopay" and status.payment_id == str(invoice.invoice_id)
    assert status.is_paid is True and status.payment_hash == invoice.hash
    assert (status.fiat_amount, status.fiat_currency) == (Decimal("19.80"), "USD")
    assert (status.crypto_code, status.crypto_amount) == ("BTC", Decimal("0.00030462"))
    assert polled.paid_usd_rate == Decimal(65000) and polled.paid_at is not None
    for amount in (status.fiat_amount, status.crypto_amount, polled.paid_usd_rate):
        assert type(amount) is Decimal


async def test_get_invoices_pages_through_many_ids(env: Env) -> None:
    ids = [(await env.invoice()).invoice_id for _ in range(5)]
    found = await env.client.get_invoices([*ids, 999999, ids[0]])
    assert sorted(i.invoice_id for i in found) == ids
    calls = await env.calls("/api/getInvoices")
    assert [int(c["query"]["count"]) for c in calls] == [2, 2, 2]  # page_size=2
    assert await env.client.get_invoices([]) == []


async def test_create_invoice_is_not_retried_once_sent(env: Env) -> None:
    await env.control.add_fault(path="/api/createInvoice", status=503)
    with pytest.raises(CryptoPayError) as caught:
        await env.invoice()
    assert caught.value.transient and caught.value.status == 503
    await env.control.add_fault(path="/api/createInvoice", mode="timeout", delay=2)
    with pytest.raises(CryptoPayError) as caught:
        await env.invoice()
    assert caught.value.transient and caught.value.status is None
    assert len(await env.calls("/api/createInvoice")) == 2  # one attempt each
    await env.control.drop_answer("createInvoice")
    with pytest.raises(CryptoPayError):
        await env.invoice()
    assert len(env.emulator.invoices) == 1  # the lost one exists; no second was made


async def test_refusals_are_typed_and_not_retried(env: Env) -> None:
    refusal = {"ok": False, "error": {"code": 400, "name": "EXPIRES_IN_INVALID"}}
    await env.control.add_fault(path="/api/createInvoice", status=400, body=refusal)
    with pytest.raises(CryptoPayError) as caught:
        await env.invoice()
    assert caught.value.error_name == "EXPIRES_IN_INVALID" and caught.value.status == 400
    assert caught.value.transient is False

    intruder = CryptoPayClient("wrong", base_url=env.url + "/api", attempts=3, backoff=0.01)
    with pytest.raises(CryptoPayError) as caught:
        await intruder.get_balance()
    await intruder.aclose()
    assert (caught.value.error_name, caught.value.status) == ("UNAUTHORIZED", 401)
    assert len(await env.calls("/api/getBalance")) == 1

    with pytest.raises(ValueError, match="cents"):
        await env.invoice(amount="19.805")
    with pytest.raises(ValueError, match="expires_in"):
        await env.invoice(expires_in=0)


async def test_reads_are_retried_on_5xx_and_timeouts(env: Env) -> None:
    invoice = await env.invoice()
    await env.control.add_fault(path="/api/getInvoices", status=502, count=1)
    await env.control.add_fault(path="/api/getInvoices", mode="timeout", delay=2, count=1)
    [polled] = await env.client.get_invoices([invoice.invoice_id])
    assert polled.invoice_id == invoice.invoice_id
    assert len(await env.calls("/api/getInvoices")) == 3

    await env.control.add_fault(path="/api/getMe", status=503, count=None)
    with pytest.raises(CryptoPayError) as caught:
        await env.client.get_me()
    assert caught.value.transient and caught.value.status == 503
    assert len(await env.calls("/api/getMe")) == 3  # bounded: attempts=3


async def test_transfer_pays_once_under_a_retried_call(env: Env) -> None:
    await env.control.set_balances({"USDT": Decimal("10")})
    await env.control.add_fault(path="/api/transfer", status=503, count=1)
    args: dict[str, Any] = {
        "user_id": USER,
        "asset": "USDT",
        "amount": Decimal("2.50"),
        "spend_id": "refund:order:42",
    }
    first = await env.client.transfer(**args, comment="Refund for order 42")
    assert first.replayed is False and first.status == "completed"
    assert (first.user_id, first.asset, first.amount) == (USER, "USDT", Decimal("2.5"))
    [*_, sent] = await env.calls("/api/transfer")
    assert sent["body"]["amount"] == "2.5" and sent["body"]["spend_id"] == "refund:order:42"

    # The caller retries the whole refund (say, after a crash before recording it).
    again = await env.client.transfer(**args)
    assert again.replayed is True and again.transfer_id == first.transfer_id
    assert len(await env.control.transfers()) == 1
    assert (await env.control.balances())["USDT"] == "7.5"


async def test_lost_answer_after_the_transfer_was_applied(env: Env) -> None:
    await env.control.set_balances({"TON": Decimal("5")})
    await env.control.drop_answer("transfer")
    transfer = await env.client.transfer(
        user_id=USER, asset="TON", amount=Decimal("1.25"), spend_id="refund:7"
    )
    assert transfer.replayed is True and transfer.amount == Decimal("1.25")
    assert [r["status"] for r in await env.calls("/api/transfer")] == [500, 400]
    assert len(await env.control.transfers()) == 1
    assert (await env.control.balances())["TON"] == "3.75"


async def test_a_spend_id_reused_for_another_payment_is_an_error(env: Env) -> None:
    await env.control.set_balances({"USDT": Decimal("10")})
    await env.client.transfer(user_id=USER, asset="USDT", amount=Decimal(1), spend_id="s")
    with pytest.raises(CryptoPayError, match="different transfer") as caught:
        await env.client.transfer(user_id=USER, asset="USDT", amount=Decimal(2), spend_id="s")
    assert caught.value.error_name == "SPEND_ID_ALREADY_USED"
    assert len(await env.control.transfers()) == 1


@pytest.mark.parametrize(
    ("setup", "name", "status"),
    [
        ({"user": False}, "USER_NOT_FOUND", 400),
        ({"balance": Decimal("0.5")}, "INSUFFICIENT_FUNDS", 400),
        ({"enabled": False}, "METHOD_DISABLED", 403),
    ],
)
async def test_transfer_refusals(env: Env, setup: dict[str, Any], name: str, status: int) -> None:
    await env.control.set_balances({"USDT": setup.get("balance", Decimal(10))})
    if "user" in setup:
        await env.control.set_user_started(USER, False)
    if "enabled" in setup:
        await env.control.settings(transfers_enabled=False)
    with pytest.raises(CryptoPayError) as caught:
        await env.client.transfer(user_id=USER, asset="USDT", amount=Decimal(1), spend_id="r")
    assert (caught.value.error_name, caught.value.status) == (name, status)
    assert caught.value.transient is False
    assert len(await env.calls("/api/transfer")) == 1 and await env.control.transfers() == []


async def test_webhook_verifier(env: Env) -> None:
    invoice = await env.invoice()
    await env.control.pay(invoice.invoice_id, "TON", deliveries=2)
    (raw, headers), (raw_again, _) = env.receiver.calls
    signature = headers["crypto-pay-api-signature"]
    update = env.client.parse_webhook(raw, signature)
    assert update.update_type == "invoice_paid" and raw_again == raw
    status = update.invoice.to_status()
    assert status.is_paid and status.payment_id == str(invoice.invoice_id)
    assert (status.crypto_code, status.crypto_amount) == ("TON", Decimal("3.6"))
    assert update.invoice.payload == "order:42" and update.invoice.amount == Decimal("19.80")

    await env.control.send_webhook(invoice.invoice_id, signature="none")
    await env.control.send_webhook(invoice.invoice_id, signature="bad")
    (unsigned, h_unsigned), (forged, h_forged) = env.receiver.calls[2:]
    for body, sig in (
        (unsigned, h_unsigned.get("crypto-pay-api-signature")),
        (forged, h_forged["crypto-pay-api-signature"]),
        (raw.replace(b'"19.80"', b'"0.01"'), signature),  # tampered after signing
        (raw, signature[:-2]),
        (raw, "é" * 64),
    ):
        assert env.client.verify_webhook(body, sig) is False
        with pytest.raises(CallbackRejected, match="bad_signature"):
            env.client.parse_webhook(body, sig)

    other = dumps(loads(raw) | {"update_type": "invoice_created"}).encode()
    await env.control.send_webhook(invoice.invoice_id, body_override=loads(other))
    raw_other, h_other = env.receiver.calls[-1]
    with pytest.raises(CallbackRejected, match="update_type"):
        env.client.parse_webhook(raw_other, h_other["crypto-pay-api-signature"])


async def test_spec_section_3_examples_on_the_wire(env: Env) -> None:
    """SPEC §3 and reference/providers.md, as the wire shows them: the refusal envelope,
    the webhook body and its signature computed here from the documented recipe."""
    async with httpx.AsyncClient(base_url=env.url + "/api") as raw:
        answer = await raw.post(
            "/createInvoice",
            headers={"Crypto-Pay-API-Token": TOKEN},
            json={"currency_type": "fiat", "fiat": "USD", "amount": "1.98", "expires_in": 2678401},
        )
    assert answer.status_code == 400
    assert answer.json() == {"ok": False, "error": {"code": 400, "name": "EXPIRES_IN_INVALID"}}

    invoice = await env.invoice("1.98", expires_in=2678400)
    await env.control.pay(invoice.invoice_id, "USDT")
    body, headers = env.receiver.calls[-1]
    update = loads(body)
    assert set(update) == {"update_id", "update_type", "request_date", "payload"}
    assert update["update_type"] == "invoice_paid"
    paid = update["payload"]
    assert type(paid["invoice_id"]) is int and paid["status"] == "paid"
    for name in ("amount", "paid_amount", "paid_usd_rate"):
        assert type(paid[name]) is str, name  # amounts are strings on the wire
    assert (paid["fiat"], paid["paid_asset"], paid["payload"]) == ("USD", "USDT", "order:42")
    for name in (
        "hash",
        "bot_invoice_url",
        "mini_app_invoice_url",
        "web_app_invoice_url",
        "created_at",
        "expiration_date",
        "paid_at",
    ):
        assert paid[name], name
    # hex HMAC-SHA256(key = SHA-256 digest of the token, message = the raw body)
    key = hashlib.sha256(TOKEN.encode()).digest()
    expected = hmac.new(key, body, hashlib.sha256).hexdigest()
    assert headers["crypto-pay-api-signature"] == expected
    assert env.client.verify_webhook(body, expected) is True
