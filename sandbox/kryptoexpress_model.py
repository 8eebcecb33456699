"""KryptoExpress emulator's records and rules: payments, callback delivery options, currency
maths, signatures and request parsing.

Amounts are ``Decimal``; a float never reaches them (bodies are parsed with ``loads``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal, localcontext
from http import HTTPStatus
from typing import Any

from aiohttp import web

from sandbox.common import json_response, now_iso, read_json_object

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


def now_ms() -> int:
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


def parse_amount(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ApiError(400, f"{name} must be a number")
    amount = Decimal(value)
    if not amount.is_finite():
        raise ApiError(400, f"{name} must be a finite number")
    return amount


def bool_field(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be a boolean")
    return value


async def json_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    return await read_json_object(
        request,
        lambda message: ApiError(400, message),
        required=required,
        missing="Required request body is missing",
        invalid_json="JSON parse error",
    )


# ---------------------------------------------------------------------- records
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
        return now_ms() > self.expire_ms

    def receive(self, amount: Decimal) -> None:
        self.received += amount
        self.transfers.append({"amount": amount, "at": now_iso()})
        if not self.is_paid and self.received >= self.crypto_amount:
            self.is_paid = True
            self.paid_ms = now_ms()

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
            concurrent=bool_field(body, "concurrent", False),
            wait=bool_field(body, "wait", True),
            body_override=override,
        )
