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

import hmac
import itertools
import random
import string
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from sandbox.common import FaultInjector, RequestLog, json_response, now_iso
from sandbox.cryptopay_control import ControlRoutes
from sandbox.cryptopay_model import (
    ASSETS,
    DEFAULT_RATES,
    FIATS,
    MAX_EXPIRES_IN,
    ApiError,
    InvoiceState,
    csv_list,
    flag,
    int_param,
    json_body,
    paginate,
    positive_decimal,
    sign_webhook,
)

__all__ = ["ApiError", "CryptoPayEmulator", "sign_webhook"]

API_PREFIX = "/api"
CONTROL_PREFIX = "/control"
Method = Callable[[dict[str, Any]], Awaitable[Any]]


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
        self.control = ControlRoutes(self, CONTROL_PREFIX)
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
        self.update_ids = itertools.count(1)
        self.requests.clear()
        self.faults.clear()

    async def reset(self) -> None:
        await self.control.cancel_tasks()
        self._reset_state()

    async def _on_cleanup(self, app: web.Application) -> None:
        await self.control.aclose()

    def _build_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self.requests.middleware, self.faults.middleware, self._errors]
        )
        r = app.router
        r.add_route("*", f"{API_PREFIX}/{{method}}", self.dispatch)
        self.control.install(app)
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
            accepted = csv_list(params.get("accepted_assets")) or list(ASSETS)
            if any(a not in ASSETS for a in accepted):
                raise ApiError(400, "ACCEPTED_ASSETS_INVALID")
        else:
            raise ApiError(400, "CURRENCY_TYPE_INVALID")
        positive_decimal(params.get("amount"), "amount")
        payload, description = params.get("payload"), params.get("description")
        if payload is not None and len(str(payload).encode()) > 4096:
            raise ApiError(400, "PAYLOAD_TOO_LONG")
        if description is not None and len(str(description)) > 1024:
            raise ApiError(400, "DESCRIPTION_TOO_LONG")
        expires_in = None
        if params.get("expires_in") is not None:
            expires_in = int_param(params, "expires_in")
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
            allow_comments=flag(params.get("allow_comments", True)),
            allow_anonymous=flag(params.get("allow_anonymous", True)),
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
                ids = {int(i) for i in csv_list(params["invoice_ids"])}
            except ValueError:
                raise ApiError(400, "INVOICE_IDS_INVALID") from None
            items = [i for i in items if i.invoice_id in ids]
        for key in ("asset", "fiat"):
            if params.get(key):
                items = [i for i in items if getattr(i, key) in csv_list(params[key])]
        bodies = [i.to_api() for i in items]
        if params.get("status"):
            bodies = [b for b in bodies if b["status"] == params["status"]]
        return {"items": paginate(bodies, params)}

    async def transfer(self, params: dict[str, Any]) -> Any:
        if not self.transfers_enabled:
            raise ApiError(403, "METHOD_DISABLED")
        spend_id = str(params.get("spend_id", ""))
        if not 1 <= len(spend_id) <= 64:
            raise ApiError(400, "SPEND_ID_INVALID")
        if any(t["spend_id"] == spend_id for t in self.transfers):
            raise ApiError(400, "SPEND_ID_ALREADY_USED")
        user_id, asset = int_param(params, "user_id"), str(params.get("asset", ""))
        if asset not in ASSETS:
            raise ApiError(400, "ASSET_INVALID")
        amount = positive_decimal(params.get("amount"), "amount")
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
            ids = set(csv_list(params["transfer_ids"]))
            items = [t for t in items if str(t["transfer_id"]) in ids]
        if params.get("asset"):
            items = [t for t in items if t["asset"] == params["asset"]]
        return {"items": paginate(items, params)}


async def _params(request: web.Request) -> dict[str, Any]:
    """Query, then JSON or form body on top (the API takes any of them)."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        try:
            params |= await json_body(request)
        except ValueError:
            raise ApiError(400, "BODY_INVALID") from None
    elif request.body_exists:
        params |= dict(await request.post())
    return params
