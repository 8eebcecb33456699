"""KryptoExpress emulator: invoices in USD paid in crypto, with signed, retried callbacks.

Speaks the wire shapes of ``shared/reference/providers.md`` under ``/api`` (the bot is
configured with ``KRYPTO_EXPRESS_API_URL = <url>/api``). The provider's error format is
undocumented; this emulator answers errors the way a Spring Boot service does:
``{"timestamp", "status", "error", "message", "path"}``.

Provider behaviour reproduced on purpose:

- Every call except ``GET /api/payment?hash=`` needs the ``X-Api-Key`` header (401).
- ``cryptoAmount`` = fiatAmount / price, rounded *up* to 8 places (6 for USDT_*/USDC_*).
- Partial transfers are summed internally (the documented object has no received-amount
  field); ``isPaid`` flips only when the sum reaches ``cryptoAmount`` — even after
  ``expireDatetime``: the provider still sees the coins. An unpaid payment past its
  expiry simply stays unpaid (no status field changes). A transfer to a payment that is
  already paid (overpayment, a second payment) is summed too and called back with the
  same object: on the documented wire it is indistinguishable from a redelivery.
- ``report_received`` (off by default, ``POST /control/options``) adds a
  ``receivedAmount`` field (the sum so far). No KryptoExpress source documents such a
  field; it is the variant under which the bot can show exact partial figures and see
  an overpayment, so both the documented and the richer wire are tested.
- Each transfer POSTs the payment object (paid or not) to ``callbackUrl``. With a
  ``callbackSecret`` the header ``X-Signature`` = hex HMAC-SHA512(secret, body). Numbers
  are written plainly (``0.000012``), as the provider does, while its docs describe
  signing Python's re-serialisation (which writes ``1.2e-05``): ``signature_mode``
  "raw" / "python" produces either variant. A delivery is retried on non-2xx or a
  connection error, once per entry of ``callback_retry_delays`` (each entry is the wait
  *before* that attempt: 0, 120, 240, 480, 960 s by default — scale them in tests).

Test steering lives under ``/control/`` (never faulted, never logged). ``{ref}`` is a
payment's numeric id *or* its 64-hex hash:

- ``POST /control/payments/{ref}/pay`` ``{amount?, callback?, signature?, signature_mode?,
  deliveries?, concurrent?, wait?}`` → ``{payment, received_amount, deliveries}``
- ``POST /control/payments/{ref}/expire`` ``{callback?: false, …delivery options}``
- ``POST /control/payments/{ref}/callback`` ``{…delivery options, body_override?}``
- ``GET /control/payments`` (a list), ``GET /control/payments/{ref}``
- ``POST /control/prices`` ``{"BTC": 70000, …}`` — change exchange rates
- ``POST /control/options`` ``{report_received?, include_paid_at?}`` — wire variants
- ``GET /control/requests?after=N`` (a list), ``POST /control/reset``
- ``POST|GET|DELETE /control/faults`` — see ``sandbox.common.FaultInjector``
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal, localcontext
from http import HTTPStatus
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from sandbox.common import FaultInjector, RequestLog, dumps, json_response, loads, now_iso

API_PREFIX = "/api"
CONTROL_PREFIX = "/control"
FIRST_PAYMENT_ID = 634
MIN_FIAT_AMOUNT = Decimal("1.00")
PAYMENT_TYPES = ("PAYMENT", "DEPOSIT")
STABLE_PREFIXES = ("USDT_", "USDC_")
DEFAULT_CURRENCIES = [
    "BTC",
    "LTC",
    "ETH",
    "SOL",
    "USDT_TRC20",
    "USDT_ERC20",
    "USDT_BEP20",
    "USDC_ERC20",
]
DEFAULT_PRICES: dict[str, Decimal] = {
    "BTC": Decimal("65000.00"),
    "ETH": Decimal("3000.00"),
    "LTC": Decimal("80.00"),
    "SOL": Decimal("150.00"),
    "BNB": Decimal("600.00"),
    "DOGE": Decimal("0.15"),
    "TRX": Decimal("0.25"),
}
SIGNATURES = ("valid", "none", "bad")
SIGNATURE_MODES = ("raw", "python")

_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_HEX = "0123456789abcdef"


# ------------------------------------------------------------------ pure helpers
def is_stable(code: str) -> bool:
    return code.startswith(STABLE_PREFIXES)


def crypto_places(code: str) -> int:
    return 6 if is_stable(code) else 8


def crypto_amount_for(fiat_amount: Decimal, price: Decimal, code: str) -> Decimal:
    """Fiat → crypto, rounded up to the currency's precision (the buyer never pays short)."""
    with localcontext() as ctx:
        ctx.prec = 50
        return (fiat_amount / price).quantize(
            Decimal(1).scaleb(-crypto_places(code)), rounding=ROUND_CEILING
        )


def sign_callback(secret: str, message: bytes) -> str:
    """The provider's ``X-Signature``: hex HMAC-SHA512, key = the secret's bytes."""
    return hmac.new(secret.encode(), message, hashlib.sha512).hexdigest()


def python_compact(body: bytes) -> bytes:
    """The re-serialisation the provider's docs sign: ``json.dumps(json.loads(body),
    separators=(",", ":"))``. Floats on purpose — it writes ``1.2e-05``, not ``0.000012``."""
    return json.dumps(json.loads(body), separators=(",", ":")).encode()


def make_address(code: str, rng: random.Random) -> str:
    """A realistic-looking deposit address for the currency's network (not a real one)."""

    def pick(alphabet: str, n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    network = code.split("_", 1)[1] if "_" in code else code
    if network == "BTC":
        return "bc1q" + pick(_BECH32, 38)
    if network == "LTC":
        return "ltc1q" + pick(_BECH32, 38)
    if network in ("SOL",):
        return pick(_BASE58, 44)
    if network in ("TRC20", "TRX"):
        return "T" + pick(_BASE58, 33)
    if network == "DOGE":
        return "D" + pick(_BASE58, 33)
    return "0x" + pick(_HEX, 40)  # ETH, ERC20, BEP20, BNB and other EVM chains


def _now_ms() -> int:
    return int(time.time() * 1000)


class ApiError(Exception):
    """An error answer. Body: Spring Boot's default shape (the real one is undocumented)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self, path: str) -> web.Response:
        body = {
            "timestamp": now_iso(),
            "status": self.status,
            "error": HTTPStatus(self.status).phrase,
            "message": self.message,
            "path": path,
        }
        return json_response(body, status=self.status)


def _amount(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ApiError(400, f"{name} must be a number")
    amount = Decimal(value)
    if not amount.is_finite():
        raise ApiError(400, f"{name} must be a finite number")
    return amount


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be a boolean")
    return value


async def _json_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ApiError(400, "Required request body is missing")
        return {}
    try:
        body = loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"JSON parse error: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body


# ------------------------------------------------------------------------ state
@dataclass
class Payment:
    id: int
    payment_type: str
    fiat_currency: str
    fiat_amount: Decimal
    crypto_amount: Decimal
    user_id: str
    crypto_currency: str
    expire_ms: int
    create_ms: int
    address: str
    hash: str
    callback_url: str | None
    callback_secret: str | None
    is_paid: bool = False
    is_withdrawn: bool = False
    paid_ms: int | None = None
    received: Decimal = Decimal(0)
    transfers: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def missing(self) -> Decimal:
        return max(self.crypto_amount - self.received, Decimal(0))

    @property
    def expired(self) -> bool:
        return _now_ms() > self.expire_ms

    def receive(self, amount: Decimal) -> None:
        self.received += amount
        self.transfers.append({"amount": amount, "at": now_iso()})
        if not self.is_paid and self.received >= self.crypto_amount:
            self.is_paid = True
            self.paid_ms = _now_ms()

    def to_api(self, *, with_paid_at: bool = False, with_received: bool = False) -> dict[str, Any]:
        # Key order as in the provider's documentation (it matters to a raw-body signature).
        body: dict[str, Any] = {
            "id": self.id,
            "paymentType": self.payment_type,
            "fiatCurrency": self.fiat_currency,
            "fiatAmount": self.fiat_amount,
            "cryptoAmount": self.crypto_amount,
            "userId": self.user_id,
            "cryptoCurrency": self.crypto_currency,
            "expireDatetime": self.expire_ms,
            "createDatetime": self.create_ms,
            "address": self.address,
            "isPaid": self.is_paid,
            "isWithdrawn": self.is_withdrawn,
            "hash": self.hash,
            "callbackUrl": self.callback_url,
        }
        if with_paid_at:  # newer SDKs show it; off by default like the documented object
            body["paidAt"] = self.paid_ms
        if with_received:  # not documented anywhere: a test variant (see the module doc)
            body["receivedAmount"] = self.received
        return body


@dataclass(frozen=True)
class DeliveryOptions:
    signature: str = "valid"  # valid | none | bad
    signature_mode: str = "raw"  # raw | python
    deliveries: int = 1
    concurrent: bool = False
    wait: bool = True
    body_override: dict[str, Any] | None = None

    @classmethod
    def parse(cls, body: dict[str, Any], *, allow_override: bool = False) -> DeliveryOptions:
        signature = body.get("signature", "valid")
        if signature not in SIGNATURES:
            raise ApiError(400, f"signature must be one of {', '.join(SIGNATURES)}")
        mode = body.get("signature_mode", "raw")
        if mode not in SIGNATURE_MODES:
            raise ApiError(400, f"signature_mode must be one of {', '.join(SIGNATURE_MODES)}")
        deliveries = body.get("deliveries", 1)
        if isinstance(deliveries, bool) or not isinstance(deliveries, int) or deliveries < 1:
            raise ApiError(400, "deliveries must be a positive integer")
        override = body.get("body_override")
        if override is not None and (not allow_override or not isinstance(override, dict)):
            raise ApiError(400, "body_override must be a JSON object (callback route only)")
        return cls(
            signature=signature,
            signature_mode=mode,
            deliveries=deliveries,
            concurrent=_bool(body, "concurrent", False),
            wait=_bool(body, "wait", True),
            body_override=override,
        )


class KryptoExpressEmulator:
    """An in-process KryptoExpress merchant account."""

    def __init__(
        self,
        api_key: str,
        *,
        currencies: list[str] | None = None,
        prices: dict[str, Decimal] | None = None,
        lifetime_seconds: int = 7200,
        callback_retry_delays: tuple[float, ...] = (0, 120, 240, 480, 960),
        callback_timeout: float = 10.0,
        include_paid_at: bool = False,
        report_received: bool = False,
        seed: int | None = None,
    ) -> None:
        """``prices`` override/extend ``DEFAULT_PRICES``; stablecoins default to 1.00.
        ``include_paid_at`` adds the ``paidAt`` field newer SDKs show. ``seed`` makes
        addresses, hashes and the userId reproducible."""
        if not callback_retry_delays:
            raise ValueError("callback_retry_delays needs at least one entry")
        self.api_key = api_key
        self.currencies = list(currencies if currencies is not None else DEFAULT_CURRENCIES)
        self._initial_prices = {
            **DEFAULT_PRICES,
            **{k: Decimal(v) for k, v in (prices or {}).items()},
        }
        for code in self.currencies:
            if code not in self._initial_prices and not is_stable(code):
                raise ValueError(f"no price for {code}: pass it in prices=")
        self.prices: dict[str, Decimal] = {}
        self.lifetime_seconds = lifetime_seconds
        self.callback_retry_delays = tuple(callback_retry_delays)
        self.callback_timeout = callback_timeout
        self.include_paid_at = include_paid_at
        self.report_received = report_received
        self._rng = random.Random(seed)
        self.user_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        self.faults = FaultInjector(control_prefix=CONTROL_PREFIX)
        self.payments: dict[int, Payment] = {}
        self.requests = RequestLog(CONTROL_PREFIX)
        self._ids = itertools.count(FIRST_PAYMENT_ID)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reset_state()
        self.app = self._build_app()

    # ------------------------------------------------------------------ state
    def _reset_state(self) -> None:
        self.prices = dict(self._initial_prices)
        self.payments = {}
        self.requests.clear()
        self._ids = itertools.count(FIRST_PAYMENT_ID)
        self.faults.clear()
        self.faults.hits = 0

    async def reset(self) -> None:
        await self._cancel_tasks()
        self._reset_state()

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _on_cleanup(self, app: web.Application) -> None:
        await self._cancel_tasks()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _wire(self, payment: Payment) -> dict[str, Any]:
        """The payment object as the API and callbacks show it, in the current variant."""
        return payment.to_api(with_paid_at=self.include_paid_at, with_received=self.report_received)

    def price_of(self, code: str) -> Decimal:
        return self.prices.get(code, Decimal("1.00"))  # only stablecoins lack a price

    def _payment(self, ref: str) -> Payment:
        """Control look-up by numeric id or by 64-hex hash."""
        if ref.isdigit():
            payment = self.payments.get(int(ref))
        else:
            payment = next((p for p in self.payments.values() if p.hash == ref.lower()), None)
        if payment is None:
            raise ApiError(404, f"Payment {ref} not found")
        return payment

    def _check_api_key(self, request: web.Request) -> None:
        given = request.headers.get("X-Api-Key", "")
        if not given or not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise ApiError(401, "Invalid or missing X-Api-Key")

    # ------------------------------------------------------------------- app
    def _build_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self.requests.middleware, self.faults.middleware, self._error_middleware]
        )
        r = app.router
        r.add_post(f"{API_PREFIX}/payment", self.create_payment)
        r.add_get(f"{API_PREFIX}/payment", self.get_payment)
        r.add_get(f"{API_PREFIX}/cryptocurrency/all", self.currencies_all)
        r.add_get(f"{API_PREFIX}/cryptocurrency", self.currencies_crypto)
        r.add_get(f"{API_PREFIX}/cryptocurrency/stable", self.currencies_stable)
        r.add_get(f"{API_PREFIX}/cryptocurrency/price", self.currency_prices)
        r.add_route("*", f"{API_PREFIX}/{{tail:.*}}", self.not_found)

        r.add_get(f"{CONTROL_PREFIX}/payments", self.control_payments)
        r.add_get(f"{CONTROL_PREFIX}/payments/{{ref}}", self.control_payment)
        r.add_post(f"{CONTROL_PREFIX}/payments/{{ref}}/pay", self.control_pay)
        r.add_post(f"{CONTROL_PREFIX}/payments/{{ref}}/expire", self.control_expire)
        r.add_post(f"{CONTROL_PREFIX}/payments/{{ref}}/callback", self.control_callback)
        r.add_post(f"{CONTROL_PREFIX}/prices", self.control_prices)
        r.add_post(f"{CONTROL_PREFIX}/options", self.control_options)
        r.add_post(f"{CONTROL_PREFIX}/reset", self.control_reset)
        self.faults.install_control_routes(app)
        self.requests.install_control_routes(app)
        app.on_cleanup.append(self._on_cleanup)
        return app

    @web.middleware
    async def _error_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response(request.path)
        except web.HTTPException as exc:
            if request.path.startswith(CONTROL_PREFIX):
                raise
            return ApiError(exc.status, exc.reason).response(request.path)

    # ------------------------------------------------------------- API routes
    async def create_payment(self, request: web.Request) -> web.Response:
        self._check_api_key(request)
        body = await _json_object(request)
        payment_type = body.get("paymentType")
        if payment_type not in PAYMENT_TYPES:
            raise ApiError(400, "paymentType must be PAYMENT or DEPOSIT")
        if body.get("fiatCurrency") != "USD":
            raise ApiError(400, "fiatCurrency not supported")
        fiat_amount = _amount(body.get("fiatAmount"), "fiatAmount")
        if fiat_amount < MIN_FIAT_AMOUNT:
            raise ApiError(400, "fiatAmount must be at least 1.00")
        code = body.get("cryptoCurrency")
        if not isinstance(code, str) or code not in self.currencies:
            raise ApiError(400, f"cryptoCurrency not supported: {code}")
        if is_stable(code) and payment_type != "PAYMENT":
            raise ApiError(400, "Stablecoins are only available with paymentType PAYMENT")
        callback_url = body.get("callbackUrl")
        callback_secret = body.get("callbackSecret")
        for name, value in (("callbackUrl", callback_url), ("callbackSecret", callback_secret)):
            if value is not None and not isinstance(value, str):
                raise ApiError(400, f"{name} must be a string")
        now = _now_ms()
        payment = Payment(
            id=next(self._ids),
            payment_type=payment_type,
            fiat_currency="USD",
            fiat_amount=fiat_amount,
            crypto_amount=crypto_amount_for(fiat_amount, self.price_of(code), code),
            user_id=self.user_id,
            crypto_currency=code,
            expire_ms=now + self.lifetime_seconds * 1000,
            create_ms=now,
            address=make_address(code, self._rng),
            hash=f"{self._rng.getrandbits(256):064x}",
            callback_url=callback_url or None,
            callback_secret=callback_secret or None,
        )
        self.payments[payment.id] = payment
        return json_response(self._wire(payment))

    async def get_payment(self, request: web.Request) -> web.Response:
        # No X-Api-Key here: anyone holding the hash may poll the status.
        payment_hash = request.query.get("hash", "").lower()
        if not payment_hash:
            raise ApiError(400, "Required parameter 'hash' is not present")
        payment = next((p for p in self.payments.values() if p.hash == payment_hash), None)
        if payment is None:
            raise ApiError(404, "Payment not found")
        return json_response(self._wire(payment))

    async def currencies_all(self, request: web.Request) -> web.Response:
        self._check_api_key(request)
        return json_response(list(self.currencies))

    async def currencies_crypto(self, request: web.Request) -> web.Response:
        self._check_api_key(request)
        return json_response([code for code in self.currencies if not is_stable(code)])

    async def currencies_stable(self, request: web.Request) -> web.Response:
        self._check_api_key(request)
        return json_response([code for code in self.currencies if is_stable(code)])

    async def currency_prices(self, request: web.Request) -> web.Response:
        self._check_api_key(request)
        fiat = request.query.get("fiatCurrency", "USD")
        if fiat != "USD":
            raise ApiError(400, "fiatCurrency not supported")
        wanted = request.query.get("cryptoCurrency", "")
        codes = [c.strip() for c in wanted.split(",") if c.strip()] or list(self.currencies)
        unknown = [code for code in codes if code not in self.currencies]
        if unknown:
            raise ApiError(400, f"cryptoCurrency not supported: {','.join(unknown)}")
        return json_response(
            [{"cryptoCurrency": c, "fiatCurrency": fiat, "price": self.price_of(c)} for c in codes]
        )

    async def not_found(self, request: web.Request) -> web.Response:
        raise ApiError(404, "No endpoint " + request.path)

    # --------------------------------------------------------------- callbacks
    def _headers(self, secret: str | None, body: bytes, options: DeliveryOptions) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if options.signature == "bad":
            headers["X-Signature"] = sign_callback((secret or "") + "-not-the-secret", body)
        elif options.signature == "valid" and secret:
            # The provider signs only when the merchant gave a callbackSecret.
            message = body if options.signature_mode == "raw" else python_compact(body)
            headers["X-Signature"] = sign_callback(secret, message)
        return headers

    async def _attempts(
        self,
        payment: Payment,
        url: str,
        body: bytes,
        headers: dict[str, str],
        delivery: int,
        records: list[dict[str, Any]],
    ) -> None:
        """One delivery: up to len(callback_retry_delays) attempts until a 2xx answer."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.callback_timeout)
            )
        for attempt, delay in enumerate(self.callback_retry_delays, start=1):
            if delay > 0:
                await asyncio.sleep(delay)
            record: dict[str, Any] = {
                "delivery": delivery,
                "attempt": attempt,
                "at": now_iso(),
                "status": None,
                "signed": "X-Signature" in headers,
                "body": body.decode(),
            }
            try:
                async with self._session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    record["status"] = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
            payment.deliveries.append(record)
            records.append(record)
            if record["status"] is not None and 200 <= record["status"] < 300:
                return

    async def _send_callbacks(
        self, payment: Payment, options: DeliveryOptions
    ) -> list[dict[str, Any]]:
        """Send the payment's current object (or the override) ``options.deliveries`` times.

        Returns the attempt records; with ``wait=False`` the list is filled in later.
        """
        records: list[dict[str, Any]] = []
        url = payment.callback_url
        if not url:
            return records
        payload = options.body_override
        if payload is None:
            payload = self._wire(payment)
        body = dumps(payload).encode()  # plain numbers: 0.000012, never 1.2e-05
        headers = self._headers(payment.callback_secret, body, options)

        async def run() -> None:
            numbers = range(1, options.deliveries + 1)
            if options.concurrent:
                await asyncio.gather(
                    *(self._attempts(payment, url, body, headers, n, records) for n in numbers)
                )
            else:
                for n in numbers:
                    await self._attempts(payment, url, body, headers, n, records)

        if options.wait:
            await run()
        else:
            task = asyncio.create_task(run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return records

    # --------------------------------------------------------- control routes
    def _control_view(self, payment: Payment) -> dict[str, Any]:
        return {
            "payment": self._wire(payment),
            "received_amount": payment.received,
            "missing_amount": payment.missing,
            "expired": payment.expired,
            "callback_secret_set": payment.callback_secret is not None,
            "transfers": payment.transfers,
            "deliveries": payment.deliveries,
        }

    async def control_payments(self, request: web.Request) -> web.Response:
        return json_response([self._control_view(p) for p in self.payments.values()])

    async def control_payment(self, request: web.Request) -> web.Response:
        return json_response(self._control_view(self._payment(request.match_info["ref"])))

    async def control_pay(self, request: web.Request) -> web.Response:
        """A transfer arrives on the payment's address (then, by default, a callback)."""
        payment = self._payment(request.match_info["ref"])
        body = await _json_object(request, required=False)
        options = DeliveryOptions.parse(body)
        send_callback = _bool(body, "callback", True)
        if body.get("amount") is None:
            amount = payment.missing
            if amount <= 0:
                raise ApiError(409, "Payment is already fully paid; give an amount to overpay")
        else:
            amount = _amount(body["amount"], "amount")
            if amount <= 0:
                raise ApiError(400, "amount must be positive")
        payment.receive(amount)
        deliveries = await self._send_callbacks(payment, options) if send_callback else []
        return json_response(
            {
                "payment": self._wire(payment),
                "received_amount": payment.received,
                "deliveries": deliveries,
            }
        )

    async def control_expire(self, request: web.Request) -> web.Response:
        payment = self._payment(request.match_info["ref"])
        body = await _json_object(request, required=False)
        options = DeliveryOptions.parse(body)
        payment.expire_ms = _now_ms() - 1000
        send_callback = _bool(body, "callback", False)
        deliveries = await self._send_callbacks(payment, options) if send_callback else []
        return json_response({"payment": self._wire(payment), "deliveries": deliveries})

    async def control_callback(self, request: web.Request) -> web.Response:
        payment = self._payment(request.match_info["ref"])
        body = await _json_object(request, required=False)
        options = DeliveryOptions.parse(body, allow_override=True)
        deliveries = await self._send_callbacks(payment, options)
        return json_response({"payment": self._wire(payment), "deliveries": deliveries})

    async def control_prices(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        prices = {code: _amount(value, code) for code, value in body.items()}
        if any(price <= 0 for price in prices.values()):
            raise ApiError(400, "prices must be positive")
        self.prices.update(prices)
        return json_response(self.prices)

    async def control_options(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        self.report_received = _bool(body, "report_received", self.report_received)
        self.include_paid_at = _bool(body, "include_paid_at", self.include_paid_at)
        return json_response(
            {"report_received": self.report_received, "include_paid_at": self.include_paid_at}
        )

    async def control_reset(self, request: web.Request) -> web.Response:
        await self.reset()
        return json_response({"ok": True})
