"""KryptoExpress emulator: invoices in USD paid in crypto, with signed, retried callbacks.

Speaks the wire shapes of ``shared/reference/providers.md`` under ``/api`` (the bot is
configured with ``KRYPTO_EXPRESS_API_URL = <url>/api``). The provider's error format is
undocumented; this emulator answers errors the way a Spring Boot service does:
``{"timestamp", "status", "error", "message", "path"}``.
This module is the app, its routes and the callback sender; payments, delivery options,
currency maths and signatures live in ``sandbox.kryptoexpress_model``.

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
import hmac
import itertools
import random
import uuid
from decimal import Decimal
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from sandbox.common import FaultInjector, RequestLog, dumps, json_response, now_iso
from sandbox.kryptoexpress_model import (
    DEFAULT_CURRENCIES,
    DEFAULT_PRICES,
    FIRST_PAYMENT_ID,
    MIN_FIAT_AMOUNT,
    PAYMENT_TYPES,
    ApiError,
    DeliveryOptions,
    Payment,
    bool_field,
    crypto_amount_for,
    is_stable,
    json_object,
    make_address,
    now_ms,
    parse_amount,
    python_compact,
    sign_callback,
)

API_PREFIX = "/api"
CONTROL_PREFIX = "/control"


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
        body = await json_object(request)
        payment_type = body.get("paymentType")
        if payment_type not in PAYMENT_TYPES:
            raise ApiError(400, "paymentType must be PAYMENT or DEPOSIT")
        if body.get("fiatCurrency") != "USD":
            raise ApiError(400, "fiatCurrency not supported")
        fiat_amount = parse_amount(body.get("fiatAmount"), "fiatAmount")
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
        now = now_ms()
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
        body = await json_object(request, required=False)
        options = DeliveryOptions.parse(body)
        send_callback = bool_field(body, "callback", True)
        if body.get("amount") is None:
            amount = payment.missing
            if amount <= 0:
                raise ApiError(409, "Payment is already fully paid; give an amount to overpay")
        else:
            amount = parse_amount(body["amount"], "amount")
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
        body = await json_object(request, required=False)
        options = DeliveryOptions.parse(body)
        payment.expire_ms = now_ms() - 1000
        send_callback = bool_field(body, "callback", False)
        deliveries = await self._send_callbacks(payment, options) if send_callback else []
        return json_response({"payment": self._wire(payment), "deliveries": deliveries})

    async def control_callback(self, request: web.Request) -> web.Response:
        payment = self._payment(request.match_info["ref"])
        body = await json_object(request, required=False)
        options = DeliveryOptions.parse(body, allow_override=True)
        deliveries = await self._send_callbacks(payment, options)
        return json_response({"payment": self._wire(payment), "deliveries": deliveries})

    async def control_prices(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        prices = {code: parse_amount(value, code) for code, value in body.items()}
        if any(price <= 0 for price in prices.values()):
            raise ApiError(400, "prices must be positive")
        self.prices.update(prices)
        return json_response(self.prices)

    async def control_options(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        self.report_received = bool_field(body, "report_received", self.report_received)
        self.include_paid_at = bool_field(body, "include_paid_at", self.include_paid_at)
        return json_response(
            {"report_received": self.report_received, "include_paid_at": self.include_paid_at}
        )

    async def control_reset(self, request: web.Request) -> web.Response:
        await self.reset()
        return json_response({"ok": True})
