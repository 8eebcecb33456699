"""The KryptoExpress emulator: payment objects, partial payments and signed, retried callbacks."""

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
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from sandbox.common import Served, dumps, loads
from sandbox.kryptoexpress import KryptoExpressEmulator, python_compact, sign_callback
from sandbox.provider_control import ControlError, KryptoExpressControl

API_KEY = "ke-test-key"
SECRET = "callback-secret"
DELAYS = (0, 0.05, 0.1, 0.2, 0.4)
VECTOR = Path("/work/shared/reference/kryptoexpress-callback-vector.json")
DOCUMENTED_KEYS = [
    "id",
    "paymentType",
    "fiatCurrency",
    "fiatAmount",
    "cryptoAmount",
    "userId",
    "cryptoCurrency",
    "expireDatetime",
    "createDatetime",
    "address",
    "isPaid",
    "isWithdrawn",
    "hash",
    "callbackUrl",
]


@dataclass
class Receiver:
    """A tiny callback endpoint: records raw bodies and headers, answers scripted statuses."""

    statuses: list[int] = field(default_factory=list)  # answered in turn, then 200
    calls: list[tuple[bytes, dict[str, str], float]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((await request.read(), dict(request.headers), time.monotonic()))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.json_response({"ok": status == 200}, status=status)


@dataclass
class Env:
    emulator: KryptoExpressEmulator
    http: httpx.AsyncClient
    control: KryptoExpressControl
    receiver: Receiver

    async def create(self, **overrides: Any) -> httpx.Response:
        body: dict[str, Any] = {
            "paymentType": "PAYMENT",
            "fiatCurrency": "USD",
            "fiatAmount": Decimal("1.98"),
            "cryptoCurrency": "BTC",
            "callbackUrl": self.receiver.url,
            "callbackSecret": SECRET,
        }
        body.update(overrides)
        body = {k: v for k, v in body.items() if v is not None}
        return await self.http.post(
            "/payment",
            content=dumps(body),
            headers={"X-Api-Key": API_KEY, "Content-Type": "application/json"},
        )

    async def create_ok(self, **overrides: Any) -> dict[str, Any]:
        response = await self.create(**overrides)
        assert response.status_code == 200, response.text
        payment: dict[str, Any] = loads(response.content)
        return payment


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    receiver = Receiver()
    receiver_app = web.Application()
    receiver_app.router.add_post("/cb", receiver.handle)
    receiver_served = Served(receiver_app)
    receiver.url = await receiver_served.start() + "/cb"

    emulator = KryptoExpressEmulator(API_KEY, callback_retry_delays=DELAYS, seed=7)
    served = Served(emulator.app)
    url = await served.start()
    async with (
        httpx.AsyncClient(base_url=url + "/api", headers={"X-Api-Key": API_KEY}, timeout=5) as http,
        KryptoExpressControl(url, timeout=10) as control,
    ):
        yield Env(emulator, http, control, receiver)
    await served.stop()
    await receiver_served.stop()


def hmac512(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha512).hexdigest()


def test_hmac_matches_the_official_vector() -> None:
    vector = json.loads(VECTOR.read_text())
    compact = vector["compact_body"].encode()
    assert sign_callback(vector["secret"], compact) == vector["x_signature"]
    # The documented re-serialisation of the pretty body gives the same compact bytes.
    assert python_compact(vector["raw_body"].encode()) == compact
    # The emulator writes that very object byte for byte as the provider does.
    assert dumps(loads(compact)).encode() == compact


async def test_create_payment_shape(env: Env) -> None:
    before = int(time.time() * 1000)
    response = await env.create_ok()
    after = int(time.time() * 1000)
    raw = (await env.create()).text  # a second payment, to look at the raw JSON text
    assert not re.search(r":-?\d+(\.\d+)?[eE]", raw)  # no number with an exponent
    assert '"cryptoAmount":0.00003047' in raw

    assert list(response) == DOCUMENTED_KEYS
    assert response["id"] == 634 and loads(raw)["id"] == 635
    assert response["paymentType"] == "PAYMENT" and response["fiatCurrency"] == "USD"
    assert response["fiatAmount"] == Decimal("1.98")
    # 1.98 / 65000 = 0.0000304615…, rounded *up* to 8 places.
    assert response["cryptoAmount"] == Decimal("0.00003047")
    assert isinstance(response["cryptoAmount"], Decimal)
    assert before <= response["createDatetime"] <= after
    assert response["expireDatetime"] - response["createDatetime"] == 7200 * 1000
    assert re.fullmatch(r"bc1q[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{38}", response["address"])
    assert re.fullmatch(r"[0-9a-f]{64}", response["hash"])
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", response["userId"]
    )
    assert response["userId"] == loads(raw)["userId"]
    assert response["isPaid"] is False and response["isWithdrawn"] is False
    assert response["callbackUrl"] == env.receiver.url

    usdt = await env.create_ok(cryptoCurrency="USDT_TRC20", fiatAmount=Decimal("4.86"))
    assert usdt["cryptoAmount"] == Decimal("4.86")
    assert re.fullmatch(r"T[1-9A-HJ-NP-Za-km-z]{33}", usdt["address"])
    erc = await env.create_ok(cryptoCurrency="USDT_ERC20", fiatAmount=Decimal("1.0000001"))
    assert erc["cryptoAmount"] == Decimal("1.000001")  # 6 places, rounded up
    assert re.fullmatch(r"0x[0-9a-f]{40}", erc["address"])

    # The status poll needs no key and returns the same object.
    async with httpx.AsyncClient(base_url=str(env.http.base_url)) as anonymous:
        polled = await anonymous.get("/payment", params={"hash": response["hash"]})
        assert polled.status_code == 200 and loads(polled.content) == response
        missing = await anonymous.get("/payment", params={"hash": "0" * 64})
        assert missing.status_code == 404
        unauthorised = await anonymous.post("/payment", json={"fiatAmount": 5})
        assert unauthorised.status_code == 401


async def test_refused_payments(env: Env) -> None:
    for overrides in (
        {"fiatAmount": Decimal("0.99")},
        {"fiatAmount": "5"},
        {"cryptoCurrency": "XMR"},
        {"fiatCurrency": "EUR"},
        {"paymentType": "DEPOSIT", "cryptoCurrency": "USDT_TRC20"},
        {"paymentType": "REFUND"},
    ):
        response = await env.create(**overrides)
        assert response.status_code == 400, overrides
        assert loads(response.content)["status"] == 400
    assert (await env.create(fiatAmount=Decimal("1.00"))).status_code == 200
    assert (await env.create(paymentType="DEPOSIT")).status_code == 200
    wrong_key = await env.http.post("/payment", json={}, headers={"X-Api-Key": "nope"})
    assert wrong_key.status_code == 401
    assert [p["payment"]["id"] for p in await env.control.payments()] == [634, 635]


async def test_currencies_and_prices(env: Env) -> None:
    all_codes = loads((await env.http.get("/cryptocurrency/all")).content)
    assert all_codes == [
        "BTC",
        "LTC",
        "ETH",
        "SOL",
        "USDT_TRC20",
        "USDT_ERC20",
        "USDT_BEP20",
        "USDC_ERC20",
    ]
    assert loads((await env.http.get("/cryptocurrency")).content) == ["BTC", "LTC", "ETH", "SOL"]
    stable = loads((await env.http.get("/cryptocurrency/stable")).content)
    assert stable == ["USDT_TRC20", "USDT_ERC20", "USDT_BEP20", "USDC_ERC20"]

    response = await env.http.get(
        "/cryptocurrency/price", params={"cryptoCurrency": "BTC,ETH", "fiatCurrency": "USD"}
    )
    assert loads(response.content) == [
        {"cryptoCurrency": "BTC", "fiatCurrency": "USD", "price": Decimal(65000)},
        {"cryptoCurrency": "ETH", "fiatCurrency": "USD", "price": Decimal(3000)},
    ]
    await env.control.set_prices({"BTC": Decimal("70000.5")})
    response = await env.http.get("/cryptocurrency/price", params={"cryptoCurrency": "BTC"})
    assert loads(response.content)[0]["price"] == Decimal("70000.5")
    bad = await env.http.get("/cryptocurrency/price", params={"cryptoCurrency": "XMR"})
    assert bad.status_code == 400


async def test_full_payment_sends_a_signed_callback(env: Env) -> None:
    payment = await env.create_ok()
    result = await env.control.pay(payment["id"])
    assert result["payment"]["isPaid"] is True
    assert result["received_amount"] == Decimal("0.00003047")
    assert [(d["attempt"], d["status"]) for d in result["deliveries"]] == [(1, 200)]

    [(raw, headers, _)] = env.receiver.calls
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Signature"] == hmac512(SECRET, raw)
    assert b"e-05" not in raw and b'"cryptoAmount":0.00003047' in raw
    sent = loads(raw)
    assert list(sent) == DOCUMENTED_KEYS and sent["isPaid"] is True
    assert sent == {**payment, "isPaid": True}

    # The status poll now says paid too.
    polled = await env.http.get("/payment", params={"hash": payment["hash"]})
    assert loads(polled.content)["isPaid"] is True

    # The documented variant: signature over Python's re-serialisation (writes 3.047e-05).
    await env.control.resend(payment["hash"], signature_mode="python")
    raw, headers, _ = env.receiver.calls[1]
    compact = json.dumps(json.loads(raw), separators=(",", ":")).encode()
    assert b"3.047e-05" in compact
    assert headers["X-Signature"] == hmac512(SECRET, compact) != hmac512(SECRET, raw)

    with pytest.raises(ControlError) as caught:
        await env.control.pay(payment["id"])  # nothing is missing any more
    assert caught.value.status == 409


async def test_partial_then_rest(env: Env) -> None:
    payment = await env.create_ok(cryptoCurrency="USDT_TRC20", fiatAmount=Decimal("5"))
    first = await env.control.pay(payment["id"], amount=Decimal("2.5"))
    assert first["payment"]["isPaid"] is False and first["received_amount"] == Decimal("2.5")
    assert "receivedAmount" not in first["payment"]  # not part of the documented object
    assert loads(env.receiver.calls[0][0])["isPaid"] is False  # the callback still came

    rest = await env.control.pay(payment["id"])
    assert rest["payment"]["isPaid"] is True and rest["received_amount"] == Decimal(5)
    assert loads(env.receiver.calls[1][0])["isPaid"] is True
    view = await env.control.payment(payment["id"])
    assert [t["amount"] for t in view["transfers"]] == [Decimal("2.5"), Decimal("2.5")]
    assert view["callback_secret_set"] is True and view["missing_amount"] == 0


async def test_unsigned_and_badly_signed(env: Env) -> None:
    payment = await env.create_ok()
    await env.control.pay(payment["id"], signature="none")
    await env.control.resend(payment["id"], signature="bad")
    (_, unsigned, _), (raw, bad, _) = env.receiver.calls
    assert "X-Signature" not in unsigned
    assert re.fullmatch(r"[0-9a-f]{128}", bad["X-Signature"])
    assert bad["X-Signature"] != hmac512(SECRET, raw)

    # Without a callbackSecret the provider never signs.
    no_secret = await env.create_ok(callbackSecret=None)
    await env.control.pay(no_secret["id"])
    assert "X-Signature" not in env.receiver.calls[2][1]
    assert (await env.control.payment(no_secret["id"]))["callback_secret_set"] is False


async def test_forged_body_override(env: Env) -> None:
    payment = await env.create_ok()
    forged = {**payment, "isPaid": True, "fiatAmount": Decimal("0.01")}
    result = await env.control.resend(payment["id"], body_override=forged)
    assert result["payment"]["isPaid"] is False  # the emulator's own state is unchanged
    raw, headers, _ = env.receiver.calls[0]
    assert loads(raw) == forged and b'"fiatAmount":0.01' in raw
    assert headers["X-Signature"] == hmac512(SECRET, raw)


async def test_five_concurrent_deliveries(env: Env) -> None:
    payment = await env.create_ok()
    result = await env.control.pay(payment["id"], deliveries=5, concurrent=True)
    assert sorted(d["delivery"] for d in result["deliveries"]) == [1, 2, 3, 4, 5]
    assert all(d["status"] == 200 for d in result["deliveries"])
    bodies = {raw for raw, _, _ in env.receiver.calls}
    assert len(env.receiver.calls) == 5 and len(bodies) == 1


async def test_failing_receiver_is_retried_with_the_delays(env: Env) -> None:
    payment = await env.create_ok()
    env.receiver.statuses = [500] * 10
    result = await env.control.pay(payment["id"])
    assert [(d["attempt"], d["status"]) for d in result["deliveries"]] == [
        (n, 500) for n in range(1, 6)
    ]
    times = [at for _, _, at in env.receiver.calls]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for gap, delay in zip(gaps, DELAYS[1:], strict=True):
        assert gap >= delay * 0.9
    assert len({raw for raw, _, _ in env.receiver.calls}) == 1  # same bytes each time

    # Recovers on the third attempt, then stops.
    env.receiver.statuses = [503, 502]
    result = await env.control.resend(payment["id"])
    assert [d["status"] for d in result["deliveries"]] == [503, 502, 200]
    assert len((await env.control.payment(payment["id"]))["deliveries"]) == 8


async def test_unreachable_receiver_records_errors(env: Env) -> None:
    unused = Served(web.Application())
    dead_url = await unused.start() + "/cb"
    await unused.stop()  # nobody listens there now
    env.emulator.callback_retry_delays = (0, 0.01, 0.01, 0.01, 0.01)
    payment = await env.create_ok(callbackUrl=dead_url)
    result = await env.control.pay(payment["id"])
    assert len(result["deliveries"]) == 5
    assert all(d["status"] is None and d["error"] for d in result["deliveries"])


async def test_wait_false_answers_first(env: Env) -> None:
    payment = await env.create_ok()
    result = await env.control.pay(payment["id"], wait=False)
    assert result["payment"]["isPaid"] is True and result["deliveries"] == []
    for _ in range(100):
        if env.receiver.calls:
            break
        await asyncio.sleep(0.01)
    assert len(env.receiver.calls) == 1


async def test_expiry(env: Env) -> None:
    payment = await env.create_ok()
    result = await env.control.expire(payment["id"])
    assert result["payment"]["expireDatetime"] < time.time() * 1000
    assert result["payment"]["isPaid"] is False and result["deliveries"] == []
    assert env.receiver.calls == []

    partial = await env.control.pay(payment["id"], amount=Decimal("0.00001"))
    assert partial["payment"]["isPaid"] is False  # expired and partial stays unpaid
    late = await env.control.pay(payment["id"])  # the rest arrives after expiry
    assert late["payment"]["isPaid"] is True
    assert (await env.control.payment(payment["hash"]))["expired"] is True

    other = await env.create_ok()
    result = await env.control.expire(other["id"], callback=True)
    assert loads(env.receiver.calls[-1][0])["expireDatetime"] == result["payment"]["expireDatetime"]


async def test_request_log_faults_and_reset(env: Env) -> None:
    await env.control.add_fault(path="/api/payment", method="POST", status=503)
    assert (await env.create()).status_code == 503
    payment = await env.create_ok()
    log = await env.control.requests()
    assert [(r["method"], r["path"], r["status"]) for r in log] == [
        ("POST", "/api/payment", 503),
        ("POST", "/api/payment", 200),
    ]
    assert log[1]["body"]["fiatAmount"] == Decimal("1.98")
    assert log[1]["body"]["callbackSecret"] == SECRET
    assert payment["id"] == 634  # the faulted call created nothing

    await env.control.reset()
    assert await env.control.payments() == [] and await env.control.requests() == []
    assert (await env.create_ok())["id"] == 634
