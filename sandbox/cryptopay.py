"""Crypto Pay emulator: fiat or crypto invoices, signed ``invoice_paid`` webhooks, transfers.

Speaks ``https://pay.crypt.bot/api/{method}`` under ``/api`` (configure the client with
``<url>/api``), as read from help.crypt.bot/crypto-pay-api and SDK sources:

- Auth by the ``Crypto-Pay-API-Token`` header, else 401 ``UNAUTHORIZED``; an unknown
  method is 405 ``METHOD_NOT_FOUND``. Parameters come as query, JSON or form, GET or POST.
- Every answer is ``{"ok":true,"result":…}`` or ``{"ok":false,"error":{"code","name"}}``
  with the HTTP status equal to ``code``. Amounts and rates are strings.
- ``transfer`` accepts one transfer per ``spend_id``; a repeat is refused with 400
  ``SPEND_ID_ALREADY_USED`` (checked before anything else, so a retry of an applied
  transfer never pays twice). Other refusals: 400 ``USER_NOT_FOUND`` (the user never
  opened @CryptoBot), 400 ``INSUFFICIENT_FUNDS``, 403 ``METHOD_DISABLED``.
- An ``active`` invoice past its ``expiration_date`` reads as ``expired``.
- Webhook: POST ``{update_id, update_type:"invoice_paid", request_date, payload:Invoice}``
  with header ``crypto-pay-api-signature`` = hex HMAC-SHA256(key=SHA-256(token), raw
  body), retried on non-2xx once per entry of ``webhook_retry_delays``.
Validation error names other than those above are our reading (``<PARAM>_INVALID``).

Test steering under ``/control/`` (never faulted, never logged):

- ``GET /control/invoices`` · ``GET /control/invoices/{id}``
- ``POST /control/invoices/{id}/pay`` ``{asset?, webhook?: true, user_id?, …delivery}``
- ``POST /control/invoices/{id}/expire`` · ``POST /control/invoices/{id}/webhook``
  ``{signature?: valid|none|bad, deliveries?, concurrent?, wait?, body_override?}``
- ``GET /control/transfers`` · ``GET|POST /control/balances`` ``{"USDT": "10", …}``
- ``POST /control/users`` ``{"not_started": [ids], "started": [ids]}``
- ``POST /control/settings`` ``{transfers_enabled?, webhook_url?}`` · ``POST /control/rates``
- ``POST /control/drop_answer`` ``{method, count?}``: apply the call, then drop the
  connection without an answer (the "answer lost" case)
- ``GET /control/deliveries`` · ``GET /control/requests`` · ``/control/faults``
- ``POST /control/reset``
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import random
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_UP, Decimal, InvalidOperation
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from sandbox.common import FaultInjector, RequestLog, dumps, json_response, loads, now_iso

API_PREFIX = "/api"
CONTROL_PREFIX = "/control"
ASSETS = ("USDT", "TON", "BTC", "ETH", "LTC", "BNB", "TRX", "USDC")
PLACES = {"USDT": 6, "USDC": 6, "TRX": 6, "TON": 9}  # others: 8
DEFAULT_RATES = {  # USD per unit
    "USDT": Decimal(1), "USDC": Decimal(1), "TON": Decimal("5.5"), "BTC": Decimal(65000),
    "ETH": Decimal(3000), "LTC": Decimal(80), "BNB": Decimal(600), "TRX": Decimal("0.25"),
}  # fmt: skip
FIATS = {"USD": Decimal(1), "EUR": Decimal("1.08")}  # USD per unit
MAX_EXPIRES_IN = 2678400
SIGNATURES = ("valid", "none", "bad")
Method = Callable[[dict[str, Any]], Awaitable[Any]]


class ApiError(Exception):
    def __init__(self, code: int, name: str) -> None:
        super().__init__(name)
        self.code = code
        self.name = name

    def response(self) -> web.Response:
        body = {"ok": False, "error": {"code": self.code, "name": self.name}}
        return json_response(body, status=self.code)


def sign_webhook(token: str, body: bytes) -> str:
    return hmac.new(hashlib.sha256(token.encode()).digest(), body, hashlib.sha256).hexdigest()


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _decimal(value: Any, name: str) -> Decimal:
    """A positive amount; the API takes strings (numbers work too), never NaN/inf."""
    try:
        amount = Decimal(str(value)) if not isinstance(value, bool) else Decimal("NaN")
    except InvalidOperation:
        raise ApiError(400, f"{name.upper()}_INVALID") from None
    if not amount.is_finite() or amount <= 0:
        raise ApiError(400, f"{name.upper()}_INVALID")
    return amount


def _int(params: dict[str, Any], name: str, default: int | None = None) -> int:
    value = params.get(name, default)
    try:
        if value is None or isinstance(value, bool):
            raise ValueError
        return int(str(value))
    except ValueError:
        raise ApiError(400, f"{name.upper()}_INVALID") from None


def _list(value: Any) -> list[str]:
    items = value if isinstance(value, list) else str(value or "").split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def _page(items: list[Any], params: dict[str, Any]) -> list[Any]:
    offset, count = _int(params, "offset", 0), _int(params, "count", 100)
    if offset < 0:
        raise ApiError(400, "OFFSET_INVALID")
    if not 1 <= count <= 1000:
        raise ApiError(400, "COUNT_INVALID")
    return items[offset : offset + count]


@dataclass
class InvoiceState:
    invoice_id: int
    hash: str
    currency_type: str
    asset: str | None
    fiat: str | None
    amount: str
    accepted_assets: list[str]
    description: str | None
    payload: str | None
    allow_comments: bool
    allow_anonymous: bool
    created_at: datetime
    expires_at: datetime | None
    bot: str
    status: str = "active"
    paid: dict[str, Any] = field(default_factory=dict)

    def refresh(self) -> None:
        if self.status == "active" and self.expires_at and datetime.now(UTC) >= self.expires_at:
            self.status = "expired"

    def to_api(self) -> dict[str, Any]:
        self.refresh()
        body: dict[str, Any] = {"invoice_id": self.invoice_id, "hash": self.hash}
        body["currency_type"] = self.currency_type
        if self.currency_type == "crypto":
            body["asset"] = self.asset
        else:
            body["fiat"] = self.fiat
            body["accepted_assets"] = list(self.accepted_assets)
        body |= {
            "amount": self.amount,
            "bot_invoice_url": f"https://t.me/{self.bot}?start={self.hash}",
            "mini_app_invoice_url": f"https://t.me/{self.bot}/app?startapp=invoice-{self.hash}",
            "web_app_invoice_url": f"https://app.send.tg/invoices/{self.hash}",
            "description": self.description,
            "status": self.status,
            "created_at": iso(self.created_at),
            "allow_comments": self.allow_comments,
            "allow_anonymous": self.allow_anonymous,
        }
        if self.expires_at:
            body["expiration_date"] = iso(self.expires_at)
        body |= self.paid
        if self.payload is not None:
            body["payload"] = self.payload
        return {k: v for k, v in body.items() if v is not None}


class CryptoPayEmulator:
    """An in-process Crypto Pay app (one token, one balance per asset)."""

    def __init__(
        self,
        token: str,
        *,
        testnet: bool = True,
        webhook_url: str | None = None,
        balances: dict[str, Decimal] | None = None,
        webhook_retry_delays: tuple[float, ...] = (0, 1, 2),
        webhook_timeout: float = 10.0,
        seed: int | None = None,
    ) -> None:
        self.token = token
        self.bot = "CryptoTestnetBot" if testnet else "CryptoBot"
        self.webhook_retry_delays = webhook_retry_delays or (0,)
        self.webhook_timeout = webhook_timeout
        self._initial = (webhook_url, dict(balances or {}))
        self._rng = random.Random(seed)
        self.faults = FaultInjector(control_prefix=CONTROL_PREFIX)
        self.requests = RequestLog(CONTROL_PREFIX)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reset_state()
        self.methods: dict[str, Method] = {
            "getMe": self.get_me,
            "getBalance": self.get_balance,
            "getExchangeRates": self.get_exchange_rates,
            "createInvoice": self.create_invoice,
            "getInvoices": self.get_invoices,
            "transfer": self.transfer,
            "getTransfers": self.get_transfers,
        }
        self.app = self._build_app()

    def _reset_state(self) -> None:
        self.webhook_url: str | None = self._initial[0]
        self.balances = {asset: Decimal(0) for asset in ASSETS} | {
            a: Decimal(v) for a, v in self._initial[1].items()
        }
        self.rates = dict(DEFAULT_RATES)
        self.invoices: dict[int, InvoiceState] = {}
        self.transfers: list[dict[str, Any]] = []
        self.not_started: set[int] = set()
        self.transfers_enabled = True
        self.drop_after: dict[str, int] = {}
        self.deliveries: list[dict[str, Any]] = []
        self._invoice_ids = itertools.count(1001)
        self._transfer_ids = itertools.count(501)
        self._update_ids = itertools.count(1)
        self.requests.clear()
        self.faults.clear()

    async def reset(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._reset_state()

    async def _on_cleanup(self, app: web.Application) -> None:
        await self.reset()
        if self._session is not None:
            await self._session.close()

    def _build_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self.requests.middleware, self.faults.middleware, self._errors]
        )
        r, c = app.router, CONTROL_PREFIX
        r.add_route("*", f"{API_PREFIX}/{{method}}", self.dispatch)
        r.add_get(f"{c}/invoices", self.c_invoices)
        r.add_get(f"{c}/invoices/{{id}}", self.c_invoice)
        r.add_post(f"{c}/invoices/{{id}}/pay", self.c_pay)
        r.add_post(f"{c}/invoices/{{id}}/expire", self.c_expire)
        r.add_post(f"{c}/invoices/{{id}}/webhook", self.c_webhook)
        r.add_get(f"{c}/transfers", self.c_transfers)
        r.add_get(f"{c}/balances", self.c_balances)
        r.add_post(f"{c}/balances", self.c_balances)
        r.add_post(f"{c}/users", self.c_users)
        r.add_post(f"{c}/settings", self.c_settings)
        r.add_post(f"{c}/rates", self.c_rates)
        r.add_post(f"{c}/drop_answer", self.c_drop_answer)
        r.add_get(f"{c}/deliveries", self.c_deliveries)
        r.add_post(f"{c}/reset", self.c_reset)
        self.faults.install_control_routes(app)
        self.requests.install_control_routes(app)
        app.on_cleanup.append(self._on_cleanup)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()

    # ------------------------------------------------------------------ API
    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        given = request.headers.get("Crypto-Pay-API-Token", "")
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise ApiError(401, "UNAUTHORIZED")
        name = request.match_info["method"]
        method = self.methods.get(name)
        if method is None:
            raise ApiError(405, "METHOD_NOT_FOUND")
        result = await method(await _params(request))
        if self.drop_after.get(name, 0) > 0:
            # Applied, but the answer is lost: the caller sees a dropped connection.
            self.drop_after[name] -= 1
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPInternalServerError()
        return json_response({"ok": True, "result": result})

    async def get_me(self, params: dict[str, Any]) -> Any:
        return {"app_id": 4242, "name": "AI Token Bot", "payment_processing_bot_username": self.bot}

    async def get_balance(self, params: dict[str, Any]) -> Any:
        return [
            {"currency_code": a, "available": format(v, "f"), "onhold": "0"}
            for a, v in self.balances.items()
        ]

    async def get_exchange_rates(self, params: dict[str, Any]) -> Any:
        return [
            {"is_valid": True, "is_crypto": True, "is_fiat": False, "source": a, "target": "USD",
             "rate": format(rate, "f")}
            for a, rate in self.rates.items()
        ]  # fmt: skip

    async def create_invoice(self, params: dict[str, Any]) -> Any:
        currency_type = str(params.get("currency_type", "crypto"))
        asset = fiat = None
        accepted: list[str] = []
        if currency_type == "crypto":
            asset = str(params.get("asset", ""))
            if asset not in ASSETS:
                raise ApiError(400, "ASSET_INVALID")
        elif currency_type == "fiat":
            fiat = str(params.get("fiat", ""))
            if fiat not in FIATS:
                raise ApiError(400, "FIAT_INVALID")
            accepted = _list(params.get("accepted_assets")) or list(ASSETS)
            if any(a not in ASSETS for a in accepted):
                raise ApiError(400, "ACCEPTED_ASSETS_INVALID")
        else:
            raise ApiError(400, "CURRENCY_TYPE_INVALID")
        _decimal(params.get("amount"), "amount")
        payload, description = params.get("payload"), params.get("description")
        if payload is not None and len(str(payload).encode()) > 4096:
            raise ApiError(400, "PAYLOAD_TOO_LONG")
        if description is not None and len(str(description)) > 1024:
            raise ApiError(400, "DESCRIPTION_TOO_LONG")
        expires_in = None
        if params.get("expires_in") is not None:
            expires_in = _int(params, "expires_in")
            if not 1 <= expires_in <= MAX_EXPIRES_IN:
                raise ApiError(400, "EXPIRES_IN_INVALID")
        now = datetime.now(UTC)
        invoice = InvoiceState(
            invoice_id=next(self._invoice_ids),
            hash="IV" + "".join(self._rng.choices(string.ascii_letters + string.digits, k=10)),
            currency_type=currency_type,
            asset=asset,
            fiat=fiat,
            amount=str(params["amount"]),
            accepted_assets=accepted,
            description=None if description is None else str(description),
            payload=None if payload is None else str(payload),
            allow_comments=_flag(params.get("allow_comments", True)),
            allow_anonymous=_flag(params.get("allow_anonymous", True)),
            created_at=now,
            expires_at=now + timedelta(seconds=expires_in) if expires_in else None,
            bot=self.bot,
        )
        self.invoices[invoice.invoice_id] = invoice
        return invoice.to_api()

    async def get_invoices(self, params: dict[str, Any]) -> Any:
        items = sorted(self.invoices.values(), key=lambda i: -i.invoice_id)
        if params.get("invoice_ids"):
            try:
                ids = {int(i) for i in _list(params["invoice_ids"])}
            except ValueError:
                raise ApiError(400, "INVOICE_IDS_INVALID") from None
            items = [i for i in items if i.invoice_id in ids]
        for key in ("asset", "fiat"):
            if params.get(key):
                items = [i for i in items if getattr(i, key) in _list(params[key])]
        bodies = [i.to_api() for i in items]
        if params.get("status"):
            bodies = [b for b in bodies if b["status"] == params["status"]]
        return {"items": _page(bodies, params)}

    async def transfer(self, params: dict[str, Any]) -> Any:
        if not self.transfers_enabled:
            raise ApiError(403, "METHOD_DISABLED")
        spend_id = str(params.get("spend_id", ""))
        if not 1 <= len(spend_id) <= 64:
            raise ApiError(400, "SPEND_ID_INVALID")
        if any(t["spend_id"] == spend_id for t in self.transfers):
            raise ApiError(400, "SPEND_ID_ALREADY_USED")
        user_id, asset = _int(params, "user_id"), str(params.get("asset", ""))
        if asset not in ASSETS:
            raise ApiError(400, "ASSET_INVALID")
        amount = _decimal(params.get("amount"), "amount")
        if user_id in self.not_started:
            raise ApiError(400, "USER_NOT_FOUND")
        if self.balances[asset] < amount:
            raise ApiError(400, "INSUFFICIENT_FUNDS")
        self.balances[asset] -= amount
        transfer = {
            "transfer_id": next(self._transfer_ids), "spend_id": spend_id, "user_id": user_id,
            "asset": asset, "amount": format(amount, "f"), "status": "completed",
            "completed_at": now_iso(),
        }  # fmt: skip
        if params.get("comment"):
            transfer["comment"] = str(params["comment"])[:1024]
        self.transfers.append(transfer)
        return transfer

    async def get_transfers(self, params: dict[str, Any]) -> Any:
        items = list(reversed(self.transfers))
        if params.get("spend_id"):
            items = [t for t in items if t["spend_id"] == str(params["spend_id"])]
        if params.get("transfer_ids"):
            ids = set(_list(params["transfer_ids"]))
            items = [t for t in items if str(t["transfer_id"]) in ids]
        if params.get("asset"):
            items = [t for t in items if t["asset"] == params["asset"]]
        return {"items": _page(items, params)}

    # -------------------------------------------------------------- webhook
    async def _deliver(self, body: bytes, headers: dict[str, str], n: int) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.webhook_timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        for attempt, delay in enumerate(self.webhook_retry_delays, start=1):
            await asyncio.sleep(delay)
            record: dict[str, Any] = {"delivery": n, "attempt": attempt, "at": now_iso()}
            record |= {"status": None, "signed": "crypto-pay-api-signature" in headers}
            record["body"] = body.decode()
            try:
                async with self._session.post(
                    self.webhook_url or "", data=body, headers=headers
                ) as r:
                    await r.read()
                    record["status"] = r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
            records.append(record)
            self.deliveries.append(record)
            if record["status"] is not None and 200 <= record["status"] < 300:
                break
        return records

    async def send_webhook(self, invoice: InvoiceState, options: dict[str, Any]) -> list[Any]:
        if not self.webhook_url:
            return []
        signature = options.get("signature", "valid")
        if signature not in SIGNATURES:
            raise ApiError(400, "SIGNATURE_INVALID")
        payload = options.get("body_override")
        if payload is None:  # one update, so duplicates carry the same update_id
            payload = {
                "update_id": next(self._update_ids), "update_type": "invoice_paid",
                "request_date": now_iso(), "payload": invoice.to_api(),
            }  # fmt: skip
        body = dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if signature != "none":
            key = self.token if signature == "valid" else self.token + "-forged"
            headers["crypto-pay-api-signature"] = sign_webhook(key, body)
        runs = [
            self._deliver(body, headers, n) for n in range(1, int(options.get("deliveries", 1)) + 1)
        ]

        async def run() -> list[Any]:
            if options.get("concurrent"):
                return [r for rs in await asyncio.gather(*runs) for r in rs]
            return [r for coro in runs for r in await coro]

        if options.get("wait", True):
            return await run()
        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return []

    # -------------------------------------------------------------- control
    def _invoice(self, request: web.Request) -> InvoiceState:
        invoice = self.invoices.get(int(request.match_info["id"]))
        if invoice is None:
            raise ApiError(404, "INVOICE_NOT_FOUND")
        return invoice

    async def c_invoices(self, request: web.Request) -> web.Response:
        return json_response([i.to_api() for i in self.invoices.values()])

    async def c_invoice(self, request: web.Request) -> web.Response:
        return json_response(self._invoice(request).to_api())

    async def c_pay(self, request: web.Request) -> web.Response:
        """The buyer pays in ``asset`` (any accepted one; default the first)."""
        invoice, body = self._invoice(request), await _json(request)
        invoice.refresh()
        if invoice.status != "active":
            raise ApiError(409, f"INVOICE_{invoice.status.upper()}")
        if invoice.currency_type == "crypto":
            asset, amount = str(invoice.asset), Decimal(invoice.amount)
        else:
            asset = str(body.get("asset") or invoice.accepted_assets[0])
            if asset not in invoice.accepted_assets:
                raise ApiError(400, "ASSET_NOT_ACCEPTED")
            usd = Decimal(invoice.amount) * FIATS[str(invoice.fiat)]
            step = Decimal(1).scaleb(-PLACES.get(asset, 8))
            amount = (usd / self.rates[asset]).quantize(step, rounding=ROUND_UP)
        rate = self.rates[asset]
        invoice.status = "paid"
        invoice.paid = {
            "paid_asset": asset, "paid_amount": format(amount, "f"),
            "paid_usd_rate": format(rate, "f"), "fee_asset": asset, "fee_amount": "0",
            "paid_at": now_iso(), "paid_anonymously": bool(body.get("paid_anonymously", False)),
        }  # fmt: skip
        if invoice.fiat:
            invoice.paid["paid_fiat_rate"] = format(rate / FIATS[invoice.fiat], "f")
        self.balances[asset] += amount
        deliveries = await self.send_webhook(invoice, body) if body.get("webhook", True) else []
        return json_response({"invoice": invoice.to_api(), "deliveries": deliveries})

    async def c_expire(self, request: web.Request) -> web.Response:
        invoice = self._invoice(request)
        if invoice.status == "active":
            invoice.expires_at = datetime.now(UTC) - timedelta(seconds=1)
            invoice.status = "expired"
        return json_response({"invoice": invoice.to_api()})

    async def c_webhook(self, request: web.Request) -> web.Response:
        invoice = self._invoice(request)
        deliveries = await self.send_webhook(invoice, await _json(request))
        return json_response({"invoice": invoice.to_api(), "deliveries": deliveries})

    async def c_transfers(self, request: web.Request) -> web.Response:
        return json_response(self.transfers)

    async def c_balances(self, request: web.Request) -> web.Response:
        for asset, value in (await _json(request)).items():
            if asset not in ASSETS:
                raise ApiError(400, "ASSET_INVALID")
            self.balances[asset] = Decimal(str(value))
        return json_response({a: format(v, "f") for a, v in self.balances.items()})

    async def c_users(self, request: web.Request) -> web.Response:
        body = await _json(request)
        self.not_started |= {int(u) for u in body.get("not_started", [])}
        self.not_started -= {int(u) for u in body.get("started", [])}
        return json_response({"not_started": sorted(self.not_started)})

    async def c_settings(self, request: web.Request) -> web.Response:
        body = await _json(request)
        if "transfers_enabled" in body:
            self.transfers_enabled = bool(body["transfers_enabled"])
        if "webhook_url" in body:
            self.webhook_url = body["webhook_url"]
        settings = {"transfers_enabled": self.transfers_enabled, "webhook_url": self.webhook_url}
        return json_response(settings)

    async def c_rates(self, request: web.Request) -> web.Response:
        self.rates.update({a: _decimal(v, "rate") for a, v in (await _json(request)).items()})
        return json_response({a: format(v, "f") for a, v in self.rates.items()})

    async def c_drop_answer(self, request: web.Request) -> web.Response:
        body = await _json(request)
        self.drop_after[str(body["method"])] = int(body.get("count", 1))
        return json_response(self.drop_after)

    async def c_deliveries(self, request: web.Request) -> web.Response:
        return json_response(self.deliveries)

    async def c_reset(self, request: web.Request) -> web.Response:
        await self.reset()
        return json_response({"ok": True})


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


async def _json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    body = loads(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise ApiError(400, "BODY_INVALID")
    return body


async def _params(request: web.Request) -> dict[str, Any]:
    """Query, then JSON or form body on top (the API takes any of them)."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        try:
            params |= await _json(request)
        except ValueError:
            raise ApiError(400, "BODY_INVALID") from None
    elif request.body_exists:
        params |= dict(await request.post())
    return params
