"""Crypto Pay (the @CryptoBot payment API, SPEC §3): fiat-USD invoices, polling, transfers.

Wire format, checked against the public docs (help.crypt.bot/crypto-pay-api) and SDK
sources (layerqa/aiocryptopay, LulzLoL231's CryptoPayAPI): ``{base}/{method}`` with the
``Crypto-Pay-API-Token`` header; parameters as query (GET) or JSON (POST); every answer
is ``{"ok":true,"result":…}`` or ``{"ok":false,"error":{"code":400,"name":"…"}}`` with
the HTTP status equal to ``code``. Amounts travel as strings both ways; we keep Decimal.

Retries (``services.http``): reads are retried on 5xx/timeouts. ``createInvoice`` is
not idempotent on the wire, so it is retried only when the request never left: after a
timeout or a 5xx an invoice may exist, and a second one would be a second pay button
for one order. The caller's fallback moves on to the next provider instead; a lost
invoice is harmless (nobody is shown its URL, it expires after ``expires_in``).
``transfer`` is made idempotent by ``spend_id`` (the API accepts one transfer per
spend_id and answers a repeat with ``SPEND_ID_ALREADY_USED``), so it *is* retried; a
repeat is resolved by looking the first transfer up with ``getTransfers(spend_id=…)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

import httpx
from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings

from core.jsonutil import loads, plain_number
from core.money import CENT, to_decimal
from services.config import empty_is_unset, http_url
from services.errors import CallbackMalformed, CallbackRejected, CryptoPayError
from services.http import JsonHttp
from services.payments.cryptopay_types import (
    MAINNET_URL,
    MAX_COUNT,
    MAX_EXPIRES_IN,
    MAX_PAYLOAD_BYTES,
    MAX_SPEND_ID,
    NAME,
    SPEND_ID_ALREADY_USED,
    TESTNET_URL,
    AppInfo,
    Balance,
    CryptoPayInvoice,
    Transfer,
    WebhookUpdate,
    parse_datetime,
)
from services.signatures import verify_cryptopay

__all__ = [
    "MAINNET_URL",
    "NAME",
    "TESTNET_URL",
    "AppInfo",
    "Balance",
    "CryptoPayClient",
    "CryptoPayInvoice",
    "CryptoPaySettings",
    "Transfer",
    "WebhookUpdate",
]


class CryptoPaySettings(BaseSettings):
    """This provider's settings (SPEC §7 names), composed into the bot's Settings."""

    crypto_pay_api_url: str = MAINNET_URL
    crypto_pay_token: SecretStr | None = None

    @field_validator("crypto_pay_token", mode="before")
    @classmethod
    def _cryptopay_empty_is_unset(cls, value: Any) -> Any:
        return empty_is_unset(value)

    @field_validator("crypto_pay_api_url")
    @classmethod
    def _cryptopay_url(cls, value: str) -> str:
        return http_url(value.strip())


def _answered(status: int) -> bool:
    """Statuses whose body is the API's envelope and final: 2xx and refusals (4xx).
    408/429/5xx stay with the HTTP layer, which retries them where safe."""
    return 200 <= status < 500 and status not in (408, 429)


class CryptoPayClient:
    name = NAME

    def __init__(
        self,
        token: str,
        *,
        base_url: str = MAINNET_URL,
        timeout: float = 10.0,
        attempts: int = 3,
        backoff: float = 0.3,
        page_size: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not 1 <= page_size <= MAX_COUNT:
            raise ValueError(f"page_size must be 1..{MAX_COUNT}")
        self._token = token
        self.page_size = page_size
        self._http = JsonHttp(
            NAME,
            base_url,
            error_type=CryptoPayError,
            headers={"Crypto-Pay-API-Token": token},
            timeout=timeout,
            attempts=attempts,
            backoff=backoff,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        idempotent: bool = True,
    ) -> Any:
        answer = await self._http.request(
            "GET" if body is None else "POST",
            f"/{method}",
            params=params,
            json_body=body,
            idempotent=idempotent,
            ok=_answered,
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
            raise CryptoPayError(NAME, f"{method}: answer is not the API envelope")
        if answer["ok"]:
            return answer.get("result")
        error = answer.get("error")
        error = error if isinstance(error, dict) else {}
        name = str(error.get("name") or "UNKNOWN_ERROR")
        code = error.get("code")
        raise CryptoPayError(
            NAME,
            f"{method}: {name}",
            status=code if isinstance(code, int) else None,
            error_name=name,
            body=str(answer)[:2000],
        )

    # ------------------------------------------------------------------ reads
    async def get_me(self) -> AppInfo:
        result = await self._call("getMe")
        try:
            return AppInfo(
                app_id=int(result["app_id"]),
                name=str(result["name"]),
                payment_processing_bot_username=str(result["payment_processing_bot_username"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CryptoPayError(NAME, f"getMe: malformed app: {exc}") from exc

    async def get_balance(self) -> dict[str, Balance]:
        result = await self._call("getBalance")
        try:
            balances = [
                Balance(
                    asset=str(row["currency_code"]),
                    available=to_decimal(row["available"]),
                    onhold=to_decimal(row.get("onhold", "0")),
                )
                for row in result
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise CryptoPayError(NAME, f"getBalance: malformed balance: {exc}") from exc
        return {balance.asset: balance for balance in balances}

    async def get_usd_rates(self) -> dict[str, Decimal]:
        """Asset → USD per unit, from ``getExchangeRates`` (only rows marked valid)."""
        result = await self._call("getExchangeRates")
        rates: dict[str, Decimal] = {}
        try:
            for row in result:
                if row.get("is_valid") is True and row.get("target") == "USD":
                    rates[str(row["source"])] = to_decimal(row["rate"])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise CryptoPayError(NAME, f"getExchangeRates: malformed rate: {exc}") from exc
        return rates

    async def get_invoices(self, invoice_ids: Sequence[int]) -> list[CryptoPayInvoice]:
        """The invoices with these ids (unknown ids are simply absent), in pages:
        the API returns at most ``count`` items (default 100) per call."""
        wanted = list(dict.fromkeys(int(i) for i in invoice_ids))
        found: list[CryptoPayInvoice] = []
        for start in range(0, len(wanted), self.page_size):
            page = wanted[start : start + self.page_size]
            params = {"invoice_ids": ",".join(map(str, page)), "count": len(page)}
            result = await self._call("getInvoices", params=params)
            items = result.get("items") if isinstance(result, dict) else None
            if not isinstance(items, list):
                raise CryptoPayError(NAME, "getInvoices: result has no items list")
            for item in items:
                invoice = CryptoPayInvoice.parse(item)
                if invoice.invoice_id not in page:
                    raise CryptoPayError(NAME, "getInvoices answered an invoice not asked for")
                found.append(invoice)
        return found

    async def find_transfer(self, spend_id: str) -> Transfer | None:
        result = await self._call("getTransfers", params={"spend_id": spend_id, "count": 1})
        items = result.get("items") if isinstance(result, dict) else None
        if not isinstance(items, list):
            raise CryptoPayError(NAME, "getTransfers: result has no items list")
        transfers = [Transfer.parse(item) for item in items]
        return next((t for t in transfers if t.spend_id == spend_id), None)

    # ----------------------------------------------------------------- writes
    async def create_invoice(
        self,
        *,
        amount_usd: Decimal,
        accepted_assets: Sequence[str],
        payload: str,
        expires_in: int,
        description: str | None = None,
    ) -> CryptoPayInvoice:
        if amount_usd <= 0 or amount_usd != amount_usd.quantize(CENT):
            raise ValueError("amount_usd must be positive whole cents")
        if not accepted_assets:
            raise ValueError("accepted_assets must name at least one asset")
        if not 1 <= expires_in <= MAX_EXPIRES_IN:
            raise ValueError(f"expires_in must be 1..{MAX_EXPIRES_IN}")
        if not payload or len(payload.encode()) > MAX_PAYLOAD_BYTES:
            raise ValueError("payload must be 1..4096 bytes")
        body: dict[str, Any] = {
            "currency_type": "fiat",
            "fiat": "USD",
            "amount": format(amount_usd, "f"),
            "accepted_assets": ",".join(accepted_assets),
            "payload": payload,
            "expires_in": expires_in,
            "allow_comments": False,
        }
        if description:
            body["description"] = description[:1024]
        # Not retried after it may have left: see the module docstring.
        result = await self._call("createInvoice", body=body, idempotent=False)
        invoice = CryptoPayInvoice.parse(result)
        if (invoice.currency_type, invoice.fiat, invoice.amount, invoice.payload) != (
            "fiat",
            "USD",
            amount_usd,
            payload,
        ):
            raise CryptoPayError(NAME, "createInvoice answered a different invoice")
        return invoice

    async def transfer(
        self,
        *,
        user_id: int,
        asset: str,
        amount: Decimal,
        spend_id: str,
        comment: str | None = None,
    ) -> Transfer:
        """Send ``amount`` of ``asset`` to a Telegram user, at most once per ``spend_id``.

        Safe to call again after a timeout, a 5xx or a crash: a repeat of a transfer
        that was applied returns that transfer with ``replayed=True``. Refusals raise
        ``CryptoPayError`` with ``error_name`` USER_NOT_FOUND, INSUFFICIENT_FUNDS, …
        """
        if amount <= 0:
            raise ValueError("amount must be positive")
        if not 1 <= len(spend_id) <= MAX_SPEND_ID:
            raise ValueError(f"spend_id must be 1..{MAX_SPEND_ID} characters")
        body: dict[str, Any] = {
            "user_id": user_id,
            "asset": asset,
            "amount": plain_number(amount),
            "spend_id": spend_id,
        }
        if comment:
            body["comment"] = comment[:1024]
        try:
            # Retried by the HTTP layer: the spend_id makes a repeat harmless.
            result = await self._call("transfer", body=body, idempotent=True)
        except CryptoPayError as exc:
            if exc.error_name != SPEND_ID_ALREADY_USED:
                raise
            return await self._replayed(spend_id, user_id, asset, amount)
        return Transfer.parse(result)

    async def _replayed(self, spend_id: str, user_id: int, asset: str, amount: Decimal) -> Transfer:
        existing = await self.find_transfer(spend_id)
        if existing is None:
            raise CryptoPayError(
                NAME,
                f"spend_id {spend_id!r} is used but no transfer has it",
                error_name=SPEND_ID_ALREADY_USED,
            )
        if (existing.user_id, existing.asset, existing.amount) != (user_id, asset, amount):
            # The same spend_id for a different payment is our bug: never report it as done.
            raise CryptoPayError(
                NAME,
                f"spend_id {spend_id!r} was used for a different transfer",
                error_name=SPEND_ID_ALREADY_USED,
            )
        return replace(existing, replayed=True)

    # ---------------------------------------------------------------- webhook
    def verify_webhook(self, raw_body: bytes, signature: str | None) -> bool:
        """``crypto-pay-api-signature`` = hex HMAC-SHA256(SHA-256(token), raw body)."""
        return verify_cryptopay(self._token, raw_body, signature)

    def parse_webhook(self, raw_body: bytes, signature: str | None) -> WebhookUpdate:
        """A verified ``invoice_paid`` update; anything else raises CallbackRejected."""
        if not self.verify_webhook(raw_body, signature):
            raise CallbackRejected("bad_signature")
        try:
            data = loads(raw_body)
            update = WebhookUpdate(
                update_id=int(data["update_id"]),
                update_type=str(data["update_type"]),
                request_date=parse_datetime(data.get("request_date")),
                invoice=CryptoPayInvoice.parse(data["payload"]),
            )
        except (KeyError, TypeError, ValueError, CryptoPayError) as exc:
            raise CallbackMalformed(f"malformed: {exc}") from exc
        if update.update_type != "invoice_paid":
            raise CallbackMalformed(f"unexpected update_type {update.update_type!r}")
        return update
