"""The Crypto Pay emulator: envelope, auth, invoices, expiry, signed webhooks, transfers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from aiohttp import web

from sandbox.common import Served, loads
from sandbox.cryptopay import CryptoPayEmulator, sign_webhook
from sandbox.provider_control import ControlError, CryptoPayControl
from services.signatures import verify_cryptopay

TOKEN = "12345:AAzQcZWQqQAbsfgPnOLr4FuBc4bQGKqfXyL"
DELAYS = (0, 0.05, 0.1)


@dataclass
class Receiver:
    statuses: list[int] = field(default_factory=list)  # answered in turn, then 200
    calls: list[tuple[bytes, dict[str, str], float]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((await request.read(), dict(request.headers), time.monotonic()))
        return web.json_response({}, status=self.statuses.pop(0) if self.statuses else 200)


@dataclass
class Env:
    emulator: CryptoPayEmulator
    http: httpx.AsyncClient
    control: CryptoPayControl
    receiver: Receiver

    async def call(self, method: str, **params: Any) -> httpx.Response:
        return await self.http.post(f"/{method}", json=params)

    async def ok(self, method: str, **params: Any) -> Any:
        response = await self.call(method, **params)
        assert response.status_code == 200, response.text
        body = loads(response.content)
        assert body["ok"] is True and set(body) == {"ok", "result"}
        return body["result"]

    async def refused(self, method: str, code: int, name: str, **params: Any) -> None:
        response = await self.call(method, **params)
        assert response.status_code == code, response.text
        assert loads(response.content) == {"ok": False, "error": {"code": code, "name": name}}

    async def invoice(self, **overrides: Any) -> dict[str, Any]:
        params: dict[str, Any] = {
            "currency_type": "fiat",
            "fiat": "USD",
            "amount": "19.80",
            "accepted_assets": "USDT,TON,BTC",
            "payload": "order:42",
            "expires_in": 900,
        }
        params.update(overrides)
        result: dict[str, Any] = await self.ok("createInvoice", **params)
        return result


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    receiver = Receiver()
    receiver_app = web.Application()
    receiver_app.router.add_post("/payments/cryptopay", receiver.handle)
    receiver_served = Served(receiver_app)
    hook = await receiver_served.start() + "/payments/cryptopay"
    emulator = CryptoPayEmulator(TOKEN, webhook_url=hook, webhook_retry_delays=DELAYS, seed=3)
    served = Served(emulator.app)
    url = await served.start()
    async with (
        httpx.AsyncClient(
            base_url=url + "/api", headers={"Crypto-Pay-API-Token": TOKEN}, timeout=5
        ) as http,
        CryptoPayControl(url, timeout=10) as control,
    ):
        yield Env(emulator, http, control, receiver)
    await served.stop()
    await receiver_served.stop()


def test_webhook_signature_follows_the_spec_rule() -> None:
    """SPEC §3: hex HMAC-SHA256, key = SHA-256 digest of the token, message = raw body."""
    body = b'{"update_id":1,"update_type":"invoice_paid","payload":{"amount":"19.80"}}'
    key = hashlib.sha256(TOKEN.encode()).digest()
    expected = hmac.new(key, body, hashlib.sha256).hexdigest()
    assert sign_webhook(TOKEN, body) == expected
    assert verify_cryptopay(TOKEN, body, expected) is True
    # Keyed with the token itself (a common mistake) it is a different signature.
    assert sign_webhook(TOKEN, body) != hmac.new(TOKEN.encode(), body, hashlib.sha256).hexdigest()


async def test_auth_envelope_and_http_methods(env: Env) -> None:
    async with httpx.AsyncClient(base_url=str(env.http.base_url)) as anonymous:
        for headers in ({}, {"Crypto-Pay-API-Token": TOKEN + "x"}):
            response = await anonymous.get("/getMe", headers=headers)
            assert response.status_code == 401
            assert loads(response.content) == {
                "ok": False,
                "error": {"code": 401, "name": "UNAUTHORIZED"},
            }
    await env.refused("getSomething", 405, "METHOD_NOT_FOUND")
    me = await env.ok("getMe")
    assert me == {
        "app_id": 4242,
        "name": "AI Token Bot",
        "payment_processing_bot_username": "CryptoTestnetBot",
    }
    # GET with a query string, POST with a form: the API takes any of them.
    by_query = await env.http.get("/createInvoice", params={"asset": "TON", "amount": "1.5"})
    assert loads(by_query.content)["result"]["asset"] == "TON"
    by_form = await env.http.post("/createInvoice", data={"asset": "BTC", "amount": "0.001"})
    assert loads(by_form.content)["result"]["amount"] == "0.001"


async def test_fiat_invoice_shape(env: Env) -> None:
    invoice = await env.invoice()
    assert invoice["invoice_id"] == 1001 and re.fullmatch(r"IV[A-Za-z0-9]{10}", invoice["hash"])
    assert invoice["currency_type"] == "fiat" and invoice["fiat"] == "USD"
    assert "asset" not in invoice
    assert invoice["amount"] == "19.80"  # amounts are strings on the wire
    assert invoice["accepted_assets"] == ["USDT", "TON", "BTC"]
    assert invoice["status"] == "active" and invoice["payload"] == "order:42"
    assert invoice["bot_invoice_url"] == f"https://t.me/CryptoTestnetBot?start={invoice['hash']}"
    assert invoice["hash"] in invoice["mini_app_invoice_url"]
    assert invoice["hash"] in invoice["web_app_invoice_url"]
    created = datetime.fromisoformat(invoice["created_at"])
    expires = datetime.fromisoformat(invoice["expiration_date"])
    assert (expires - created).total_seconds() == 900
    assert "paid_at" not in invoice and "paid_amount" not in invoice

    crypto = await env.invoice(currency_type="crypto", asset="USDT", amount="5")
    assert crypto["asset"] == "USDT" and "fiat" not in crypto
    assert "expiration_date" in crypto
    no_expiry = await env.invoice(expires_in=None)
    assert "expiration_date" not in no_expiry


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"expires_in": 0}, "EXPIRES_IN_INVALID"),
        ({"expires_in": 2678401}, "EXPIRES_IN_INVALID"),
        ({"fiat": "XYZ"}, "FIAT_INVALID"),
        ({"accepted_assets": "USDT,DOGE"}, "ACCEPTED_ASSETS_INVALID"),
        ({"amount": "-1"}, "AMOUNT_INVALID"),
        ({"amount": "ten"}, "AMOUNT_INVALID"),
        ({"payload": "x" * 4097}, "PAYLOAD_TOO_LONG"),
        ({"currency_type": "gold"}, "CURRENCY_TYPE_INVALID"),
        ({"currency_type": "crypto", "asset": "DOGE"}, "ASSET_INVALID"),
    ],
)
async def test_create_invoice_refusals(env: Env, overrides: dict[str, Any], name: str) -> None:
    params = {"currency_type": "fiat", "fiat": "USD", "amount": "19.80", "expires_in": 60}
    await env.refused("createInvoice", 400, name, **(params | overrides))
    assert env.emulator.invoices == {}


async def test_get_invoices_by_ids_status_and_pages(env: Env) -> None:
    ids = [(await env.invoice())["invoice_id"] for _ in range(5)]
    wanted = f"{ids[0]},{ids[3]},999999"
    result = await env.ok("getInvoices", invoice_ids=wanted)
    assert sorted(i["invoice_id"] for i in result["items"]) == [ids[0], ids[3]]
    # The default page is 100; count and offset page through the list (newest first).
    page = await env.ok("getInvoices", count=2, offset=1)
    assert [i["invoice_id"] for i in page["items"]] == [ids[3], ids[2]]
    for count in (0, 1001):
        await env.refused("getInvoices", 400, "COUNT_INVALID", count=count)
    await env.control.pay(ids[1], "USDT")
    paid = await env.ok("getInvoices", status="paid")
    assert [i["invoice_id"] for i in paid["items"]] == [ids[1]]


async def test_pay_in_the_buyers_asset_sends_a_signed_webhook(env: Env) -> None:
    invoice = await env.invoice()
    result = await env.control.pay(invoice["invoice_id"], "TON")
    paid = result["invoice"]
    assert paid["status"] == "paid" and paid["paid_asset"] == "TON"
    assert paid["paid_amount"] == "3.600000000"  # 19.80 USD / 5.5 USD per TON
    assert paid["paid_usd_rate"] == "5.5" and paid["paid_fiat_rate"] == "5.5"
    assert datetime.fromisoformat(paid["paid_at"]) >= datetime.fromisoformat(paid["created_at"])
    assert [(d["attempt"], d["status"], d["signed"]) for d in result["deliveries"]] == [
        (1, 200, True)
    ]
    assert (await env.control.balances())["TON"] == "3.600000000"

    [(raw, headers, _)] = env.receiver.calls
    signature = headers["crypto-pay-api-signature"]
    assert re.fullmatch(r"[0-9a-f]{64}", signature)
    assert verify_cryptopay(TOKEN, raw, signature) is True
    update = loads(raw)
    assert list(update) == ["update_id", "update_type", "request_date", "payload"]
    assert update["update_type"] == "invoice_paid" and update["update_id"] == 1
    polled = await env.ok("getInvoices", invoice_ids=str(invoice["invoice_id"]))
    assert update["payload"] == polled["items"][0] == paid

    btc = await env.invoice()
    paid_btc = (await env.control.pay(btc["invoice_id"], "BTC", webhook=False))["invoice"]
    assert paid_btc["paid_amount"] == "0.00030462"  # 19.80 / 65000, rounded up to 8 places
    assert len(env.receiver.calls) == 1


async def test_pay_refusals(env: Env) -> None:
    invoice = await env.invoice()
    with pytest.raises(ControlError) as caught:
        await env.control.pay(invoice["invoice_id"], "ETH")  # not among accepted_assets
    assert caught.value.status == 400
    await env.control.pay(invoice["invoice_id"], "USDT", webhook=False)
    with pytest.raises(ControlError) as caught:
        await env.control.pay(invoice["invoice_id"], "USDT")
    assert caught.value.status == 409 and "INVOICE_PAID" in caught.value.body


async def test_expiry(env: Env) -> None:
    invoice = await env.invoice()
    expired = (await env.control.expire(invoice["invoice_id"]))["invoice"]
    assert expired["status"] == "expired"
    with pytest.raises(ControlError) as caught:
        await env.control.pay(invoice["invoice_id"], "USDT")
    assert caught.value.status == 409 and "INVOICE_EXPIRED" in caught.value.body

    short = await env.invoice(expires_in=1)
    await asyncio.sleep(1.05)  # the clock alone turns it expired
    polled = await env.ok("getInvoices", invoice_ids=str(short["invoice_id"]))
    assert polled["items"][0]["status"] == "expired"
    assert env.receiver.calls == []


async def test_unsigned_forged_and_duplicate_webhooks(env: Env) -> None:
    invoice = await env.invoice()
    await env.control.pay(invoice["invoice_id"], "USDT", signature="none")
    await env.control.send_webhook(invoice["invoice_id"], signature="bad")
    await env.control.send_webhook(invoice["invoice_id"], deliveries=2, concurrent=True)
    (raw0, unsigned, _), (raw1, bad, _), (raw2, h2, _), (raw3, h3, _) = env.receiver.calls
    assert "crypto-pay-api-signature" not in unsigned
    assert verify_cryptopay(TOKEN, raw1, bad["crypto-pay-api-signature"]) is False
    assert raw2 == raw3 and h2["crypto-pay-api-signature"] == h3["crypto-pay-api-signature"]
    assert verify_cryptopay(TOKEN, raw2, h2["crypto-pay-api-signature"]) is True
    assert loads(raw0)["update_id"] != loads(raw2)["update_id"]  # a resend is a new update

    forged = json.loads(raw2) | {"payload": {**json.loads(raw2)["payload"], "amount": "0.01"}}
    await env.control.send_webhook(invoice["invoice_id"], body_override=forged)
    raw4, h4, _ = env.receiver.calls[4]
    assert loads(raw4)["payload"]["amount"] == "0.01"
    assert verify_cryptopay(TOKEN, raw4, h4["crypto-pay-api-signature"]) is True
    assert (await env.control.invoice(invoice["invoice_id"]))["amount"] == "19.80"


async def test_failing_webhook_receiver_is_retried(env: Env) -> None:
    invoice = await env.invoice()
    env.receiver.statuses = [500, 503]
    result = await env.control.pay(invoice["invoice_id"], "USDT")
    assert [(d["attempt"], d["status"]) for d in result["deliveries"]] == [
        (1, 500),
        (2, 503),
        (3, 200),
    ]
    times = [at for _, _, at in env.receiver.calls]
    for (earlier, later), delay in zip(itertools.pairwise(times), DELAYS[1:], strict=True):
        assert later - earlier >= delay * 0.9
    assert len({raw for raw, _, _ in env.receiver.calls}) == 1


async def test_transfers_and_spend_id(env: Env) -> None:
    await env.control.set_balances({"USDT": Decimal("10")})
    params = {"user_id": 777, "asset": "USDT", "amount": "2.5", "spend_id": "refund:42"}
    transfer = await env.ok("transfer", **params, comment="Refund for order 42")
    assert transfer["status"] == "completed" and transfer["amount"] == "2.5"
    assert transfer["spend_id"] == "refund:42" and transfer["user_id"] == 777
    # The same spend_id never pays again, whatever the other parameters say.
    await env.refused("transfer", 400, "SPEND_ID_ALREADY_USED", **params)
    await env.refused("transfer", 400, "SPEND_ID_ALREADY_USED", **(params | {"amount": "1"}))
    assert (await env.control.balances())["USDT"] == "7.5"
    found = await env.ok("getTransfers", spend_id="refund:42")
    assert found["items"] == [transfer]
    assert (await env.ok("getTransfers", spend_id="other"))["items"] == []
    # GET with a query string works as well (some SDKs only use GET).
    by_get = await env.http.get("/transfer", params=params | {"spend_id": "g", "amount": "1"})
    assert loads(by_get.content)["result"]["amount"] == "1"

    await env.control.set_user_started(888, False)
    await env.refused(
        "transfer", 400, "USER_NOT_FOUND", **(params | {"user_id": 888, "spend_id": "a"})
    )
    await env.refused(
        "transfer", 400, "INSUFFICIENT_FUNDS", **(params | {"spend_id": "b", "amount": "99"})
    )
    await env.refused("transfer", 400, "SPEND_ID_INVALID", **(params | {"spend_id": "x" * 65}))
    await env.control.settings(transfers_enabled=False)
    await env.refused("transfer", 403, "METHOD_DISABLED", **(params | {"spend_id": "c"}))
    assert len(await env.control.transfers()) == 2
    assert (await env.control.balances())["USDT"] == "6.5"


async def test_an_applied_call_whose_answer_is_lost(env: Env) -> None:
    await env.control.set_balances({"USDT": Decimal("5")})
    await env.control.drop_answer("transfer")
    params = {"user_id": 1, "asset": "USDT", "amount": "1", "spend_id": "s1"}
    with pytest.raises(httpx.TransportError):
        await env.call("transfer", **params)
    assert len(await env.control.transfers()) == 1  # it happened all the same
    await env.refused("transfer", 400, "SPEND_ID_ALREADY_USED", **params)
    assert (await env.control.balances())["USDT"] == "4"


async def test_faults_request_log_and_reset(env: Env) -> None:
    await env.control.add_fault(path="/api/createInvoice", status=503)
    assert (await env.call("createInvoice", asset="TON", amount="1")).status_code == 503
    await env.invoice()
    log = await env.control.requests()
    assert [(r["path"], r["status"]) for r in log] == [
        ("/api/createInvoice", 503),
        ("/api/createInvoice", 200),
    ]
    assert log[1]["body"]["amount"] == "19.80" and log[1]["body"]["fiat"] == "USD"
    await env.control.reset()
    assert await env.control.invoices() == [] and await env.control.requests() == []
    assert (await env.invoice())["invoice_id"] == 1001
