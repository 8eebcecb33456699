"""Crypto Pay emulator pieces: constants, the error envelope, parameter parsing, invoices.

Shared by ``sandbox.cryptopay`` (the API) and ``sandbox.cryptopay_control`` (steering).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from sandbox.common import json_response, loads

ASSETS = ("USDT", "TON", "BTC", "ETH", "LTC", "BNB", "TRX", "USDC")
PLACES = {"USDT": 6, "USDC": 6, "TRX": 6, "TON": 9}  # others: 8
DEFAULT_RATES = {  # USD per unit
    "USDT": Decimal(1), "USDC": Decimal(1), "TON": Decimal("5.5"), "BTC": Decimal(65000),
    "ETH": Decimal(3000), "LTC": Decimal(80), "BNB": Decimal(600), "TRX": Decimal("0.25"),
}  # fmt: skip
FIATS = {"USD": Decimal(1), "EUR": Decimal("1.08")}  # USD per unit
MAX_EXPIRES_IN = 2678400
SIGNATURES = ("valid", "none", "bad")


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


def positive_decimal(value: Any, name: str) -> Decimal:
    """A positive amount; the API takes strings (numbers work too), never NaN/inf."""
    try:
        amount = Decimal(str(value)) if not isinstance(value, bool) else Decimal("NaN")
    except InvalidOperation:
        raise ApiError(400, f"{name.upper()}_INVALID") from None
    if not amount.is_finite() or amount <= 0:
        raise ApiError(400, f"{name.upper()}_INVALID")
    return amount


def int_param(params: dict[str, Any], name: str, default: int | None = None) -> int:
    value = params.get(name, default)
    try:
        if value is None or isinstance(value, bool):
            raise ValueError
        return int(str(value))
    except ValueError:
        raise ApiError(400, f"{name.upper()}_INVALID") from None


def csv_list(value: Any) -> list[str]:
    items = value if isinstance(value, list) else str(value or "").split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def paginate(items: list[Any], params: dict[str, Any]) -> list[Any]:
    offset, count = int_param(params, "offset", 0), int_param(params, "count", 100)
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


def flag(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    body = loads(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise ApiError(400, "BODY_INVALID")
    return body
