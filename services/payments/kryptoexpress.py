"""KryptoExpress (SPEC §3): invoices in USD, paid in crypto, confirmed by signed callbacks."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings

from core.jsonutil import loads
from core.money import quantize_crypto, to_decimal
from services.config import empty_is_unset, http_url
from services.errors import (
    CallbackMalformed,
    CallbackRejected,
    CurrencyUnavailable,
    ExternalError,
    ProviderError,
)
from services.http import JsonHttp
from services.payments.base import ASSETS, Invoice, PaymentStatus

NAME = "kryptoexpress"
# Cheapest network first: the buyer pays the transfer fee.
USDT_PREFERENCE = ("USDT_TRC20", "USDT_BEP20", "USDT_SOL", "USDT_ERC20")
NETWORKS = {
    "BTC": "Bitcoin",
    "USDT_TRC20": "TRON (TRC-20)",
    "USDT_BEP20": "BNB Smart Chain (BEP-20)",
    "USDT_SOL": "Solana",
    "USDT_ERC20": "Ethereum (ERC-20)",
}


class KryptoExpressSettings(BaseSettings):
    """This provider's settings (SPEC §7 names), composed into the bot's Settings."""

    krypto_express_api_url: str = "https://kryptoexpress.pro/api"
    krypto_express_api_key: SecretStr | None = None
    krypto_express_callback_secret: SecretStr | None = None

    @field_validator("krypto_express_api_key", "krypto_express_callback_secret", mode="before")
    @classmethod
    def _kryptoexpress_empty_is_unset(cls, value: Any) -> Any:
        return empty_is_unset(value)

    @field_validator("krypto_express_api_url")
    @classmethod
    def _kryptoexpress_url(cls, value: str) -> str:
        return http_url(value.strip())


def required_settings(settings: KryptoExpressSettings) -> list[tuple[str, object]]:
    """What a real run using this provider needs: (variable, value) pairs."""
    return [
        ("KRYPTO_EXPRESS_API_KEY", settings.krypto_express_api_key),
        ("KRYPTO_EXPRESS_CALLBACK_SECRET", settings.krypto_express_callback_secret),
    ]


def build(
    settings: KryptoExpressSettings, callback_url: str | None
) -> KryptoExpressProvider | None:
    """The provider, or None while it has no API key (not configured)."""
    api_key = _secret(settings.krypto_express_api_key)
    if not api_key:
        return None
    return KryptoExpressProvider(
        settings.krypto_express_api_url,
        api_key,
        callback_url=callback_url,
        callback_secret=_secret(settings.krypto_express_callback_secret),
    )


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def signature(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha512).hexdigest()


def compact(raw_body: bytes) -> bytes:
    """The provider's documented canonical form: Python's compact re-serialisation.

    Plain ``json`` (floats) on purpose: this is only a canonical byte string to hash,
    it must equal what ``json.dumps(json.loads(raw), separators=(",", ":"))`` gives.
    """
    return json.dumps(json.loads(raw_body), separators=(",", ":")).encode()


def verify_signature(secret: str | None, raw_body: bytes, signature_hex: str | None) -> bool:
    """True only for a body signed with our secret (constant-time, fails closed).

    Accepts a match on the raw body or on the documented re-serialisation: Python
    writes ``1.2e-05`` where the provider's own code may write ``0.000012``.
    """
    if not secret or not signature_hex:
        return False
    signature_hex = signature_hex.strip().lower()
    # compare_digest raises on non-ASCII text: a hostile header must be a refusal.
    if len(signature_hex) != 128 or not signature_hex.isascii():
        return False
    if hmac.compare_digest(signature(secret, raw_body), signature_hex):
        return True
    try:
        canonical = compact(raw_body)
    except (ValueError, RecursionError):
        return False
    return hmac.compare_digest(signature(secret, canonical), signature_hex)


def _ms_to_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


class KryptoExpressProvider:
    name = NAME

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        callback_url: str | None,
        callback_secret: str | None,
        timeout: float = 10.0,
        attempts: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = JsonHttp(
            NAME,
            base_url,
            error_type=ProviderError,
            headers={"X-Api-Key": api_key},
            timeout=timeout,
            attempts=attempts,
            transport=transport,
        )
        self._callback_url = callback_url
        self._callback_secret = callback_secret
        self._codes: tuple[float, dict[str, str]] | None = None
        self._rates: dict[str, tuple[float, Decimal]] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def available_assets(self) -> dict[str, str]:
        now = time.monotonic()
        if self._codes is not None and now - self._codes[0] < 600:
            return self._codes[1]
        body = await self._http.request("GET", "/cryptocurrency/all")
        if not isinstance(body, list):
            raise ProviderError(NAME, "GET /cryptocurrency/all: unexpected answer")
        listed = {str(code) for code in body}
        mapping: dict[str, str] = {}
        usdt = next((code for code in USDT_PREFERENCE if code in listed), None)
        if usdt is None:
            usdt = next((code for code in sorted(listed) if code.startswith("USDT_")), None)
        if usdt:
            mapping["USDT"] = usdt
        if "BTC" in listed:
            mapping["BTC"] = "BTC"
        mapping = {asset: mapping[asset] for asset in ASSETS if asset in mapping}
        self._codes = (now, mapping)
        return mapping

    async def rate_usd(self, asset: str) -> Decimal | None:
        if asset == "USDT":
            return Decimal(1)
        cached = self._rates.get(asset)
        if cached and time.monotonic() - cached[0] < 300:
            return cached[1]
        codes = await self.available_assets()
        code = codes.get(asset)
        if code is None:
            return None
        body = await self._http.request(
            "GET", "/cryptocurrency/price", params={"cryptoCurrency": code, "fiatCurrency": "USD"}
        )
        for row in body if isinstance(body, list) else []:
            if isinstance(row, dict) and row.get("cryptoCurrency") == code:
                price = to_decimal(row["price"])
                if price > 0:
                    self._rates[asset] = (time.monotonic(), price)
                    return price
        return None

    async def create_invoice(self, *, order_id: int, amount_usd: Decimal, asset: str) -> Invoice:
        codes = await self.available_assets()
        code = codes.get(asset)
        if code is None:
            raise CurrencyUnavailable(asset=asset)
        if not self._callback_secret:
            # Without a secret callbacks would arrive unsigned; we never accept those.
            raise ProviderError(NAME, "KRYPTO_EXPRESS_CALLBACK_SECRET is not set")
        request: dict[str, Any] = {
            "paymentType": "PAYMENT",
            "fiatCurrency": "USD",
            "fiatAmount": amount_usd,
            "cryptoCurrency": code,
            "callbackSecret": self._callback_secret,
        }
        if self._callback_url:
            request["callbackUrl"] = self._callback_url
        # Retried on 5xx/timeouts even though a failed-looking create may have made an
        # invoice: such an orphan is harmless (nobody is shown its address, it expires
        # unpaid), while giving up would send the buyer back to the start.
        body = await self._http.request("POST", "/payment", json_body=request)
        status = self.parse_callback(body)
        if status.fiat_currency != "USD" or status.fiat_amount != amount_usd:
            raise ProviderError(NAME, "invoice amount differs from the request")
        if status.crypto_code != code or not body.get("address"):
            raise ProviderError(NAME, "invoice currency/address missing or different")
        expires = status.expires_at or datetime.now(UTC)
        return Invoice(
            provider=NAME,
            payment_id=status.payment_id,
            payment_hash=status.payment_hash,
            asset=asset,
            crypto_code=code,
            network=NETWORKS.get(code, code),
            crypto_amount=quantize_crypto(status.crypto_amount, asset),
            address=str(body["address"]),
            fiat_amount=status.fiat_amount,
            fiat_currency=status.fiat_currency,
            expires_at=expires,
            raw=body,
        )

    async def fetch_status(self, payment_id: str, payment_hash: str) -> PaymentStatus:
        body = await self._http.request("GET", "/payment", params={"hash": payment_hash})
        status = self.parse_callback(body)
        if status.payment_id != payment_id:
            raise ProviderError(NAME, "GET /payment answered for another payment")
        return status

    def verify_callback(self, raw_body: bytes, headers: Mapping[str, str]) -> PaymentStatus:
        if not verify_signature(self._callback_secret, raw_body, headers.get("X-Signature")):
            raise CallbackRejected("bad_signature")
        try:
            return self.parse_callback(loads(raw_body))
        except (ValueError, ExternalError) as exc:
            raise CallbackMalformed(str(exc)) from exc

    def parse_callback(self, payload: Any) -> PaymentStatus:
        if not isinstance(payload, dict):
            raise ProviderError(NAME, "payment object is not a JSON object")
        try:
            return PaymentStatus(
                provider=NAME,
                payment_id=str(int(payload["id"])),
                payment_hash=str(payload["hash"]),
                is_paid=payload["isPaid"] is True,
                fiat_amount=to_decimal(payload["fiatAmount"]),
                fiat_currency=str(payload["fiatCurrency"]),
                crypto_code=str(payload["cryptoCurrency"]),
                crypto_amount=to_decimal(payload["cryptoAmount"]),
                expires_at=_ms_to_datetime(payload.get("expireDatetime")),
                raw=payload,
                received_amount=_optional_decimal(payload.get("receivedAmount")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(NAME, f"malformed payment object: {exc}") from exc


def _optional_decimal(value: Any) -> Decimal | None:
    # Not in the documented object; read when a variant of the API sends it.
    return None if value is None else to_decimal(value)
