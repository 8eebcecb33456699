"""Crypto Pay's objects (Invoice, Transfer, Balance, App, webhook Update) as typed values.

Field names and meanings follow help.crypt.bot/crypto-pay-api; amounts arrive as
strings and become Decimal here (a float is refused by ``to_decimal``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from core.money import to_decimal
from services.errors import CryptoPayError
from services.payments.base import Invoice, PaymentStatus

NAME = "cryptopay"
MAINNET_URL = "https://pay.crypt.bot/api"
TESTNET_URL = "https://testnet-pay.crypt.bot/api"
NETWORK = "Crypto Pay (@CryptoBot)"
MAX_COUNT = 1000  # getInvoices/getTransfers accept count 1–1000 (default 100)
MAX_EXPIRES_IN = 2678400  # createInvoice expires_in: 1–2678400 s
MAX_PAYLOAD_BYTES = 4096
MAX_SPEND_ID = 64

# error.name values the bot acts on (others are reported as they come).
UNAUTHORIZED = "UNAUTHORIZED"
USER_NOT_FOUND = "USER_NOT_FOUND"  # the user never opened @CryptoBot
INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"  # the app's balance cannot cover a transfer
SPEND_ID_ALREADY_USED = "SPEND_ID_ALREADY_USED"
METHOD_DISABLED = "METHOD_DISABLED"  # transfer is off by default for new apps

PAID, ACTIVE, EXPIRED = "paid", "active", "expired"


def parse_datetime(value: Any) -> datetime | None:
    return None if value in (None, "") else datetime.fromisoformat(str(value))


def _amount(value: Any) -> Decimal | None:
    return None if value in (None, "") else to_decimal(value)


@dataclass(frozen=True)
class CryptoPayInvoice:
    invoice_id: int
    hash: str
    status: str  # active | paid | expired
    currency_type: str  # fiat | crypto
    fiat: str | None
    asset: str | None
    amount: Decimal
    accepted_assets: tuple[str, ...]
    payload: str | None
    bot_invoice_url: str
    mini_app_invoice_url: str | None
    web_app_invoice_url: str | None
    created_at: datetime | None
    expires_at: datetime | None
    paid_at: datetime | None
    paid_asset: str | None
    paid_amount: Decimal | None
    paid_usd_rate: Decimal | None
    raw: dict[str, Any]

    @classmethod
    def parse(cls, data: Any) -> CryptoPayInvoice:
        if not isinstance(data, dict):
            raise CryptoPayError(NAME, "invoice is not a JSON object")
        try:
            accepted = data.get("accepted_assets") or ()
            if isinstance(accepted, str):
                accepted = accepted.split(",")
            return cls(
                invoice_id=int(data["invoice_id"]),
                hash=str(data["hash"]),
                status=str(data["status"]),
                currency_type=str(data.get("currency_type", "crypto")),
                fiat=data.get("fiat"),
                asset=data.get("asset"),
                amount=to_decimal(data["amount"]),
                accepted_assets=tuple(str(a).strip() for a in accepted if str(a).strip()),
                payload=data.get("payload"),
                bot_invoice_url=str(data.get("bot_invoice_url") or data.get("pay_url") or ""),
                mini_app_invoice_url=data.get("mini_app_invoice_url"),
                web_app_invoice_url=data.get("web_app_invoice_url"),
                created_at=parse_datetime(data.get("created_at")),
                expires_at=parse_datetime(data.get("expiration_date")),
                paid_at=parse_datetime(data.get("paid_at")),
                paid_asset=data.get("paid_asset"),
                paid_amount=_amount(data.get("paid_amount")),
                paid_usd_rate=_amount(data.get("paid_usd_rate")),
                raw=data,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CryptoPayError(NAME, f"malformed invoice: {exc}") from exc

    @property
    def is_paid(self) -> bool:
        return self.status == PAID

    def to_status(self) -> PaymentStatus:
        """The provider-neutral view. For a fiat invoice the buyer picks the asset in
        @CryptoBot, so the crypto side is known only once it is paid. (For a crypto
        invoice ``fiat_currency`` is empty, so it can never match a USD order.)"""
        return PaymentStatus(
            provider=NAME,
            payment_id=str(self.invoice_id),
            payment_hash=self.hash,
            is_paid=self.is_paid,
            fiat_amount=self.amount,
            fiat_currency=self.fiat or "",
            crypto_code=self.paid_asset or self.asset or "",
            crypto_amount=self.paid_amount or Decimal(0),
            expires_at=self.expires_at,
            raw=self.raw,
        )

    def to_invoice(self, asset: str) -> Invoice:
        """The buyer-facing invoice: no deposit address, the pay URL is where to pay
        (``address`` carries it; the mini-app/web URLs stay in ``raw``). The crypto
        amount is not fixed before payment, hence 0."""
        if self.expires_at is None:
            raise CryptoPayError(NAME, "invoice has no expiration_date")
        return Invoice(
            provider=NAME,
            payment_id=str(self.invoice_id),
            payment_hash=self.hash,
            asset=asset,
            crypto_code=asset,
            network=NETWORK,
            crypto_amount=Decimal(0),
            address=self.bot_invoice_url,
            fiat_amount=self.amount,
            fiat_currency=self.fiat or "",
            expires_at=self.expires_at,
            raw=self.raw,
        )


@dataclass(frozen=True)
class Transfer:
    transfer_id: int
    spend_id: str | None
    user_id: int
    asset: str
    amount: Decimal
    status: str  # only ever "completed"
    completed_at: datetime | None
    comment: str | None
    raw: dict[str, Any]
    replayed: bool = False  # True: an earlier call with this spend_id had already paid

    @classmethod
    def parse(cls, data: Any) -> Transfer:
        if not isinstance(data, dict):
            raise CryptoPayError(NAME, "transfer is not a JSON object")
        try:
            return cls(
                transfer_id=int(data["transfer_id"]),
                spend_id=data.get("spend_id"),
                user_id=int(data["user_id"]),
                asset=str(data["asset"]),
                amount=to_decimal(data["amount"]),
                status=str(data["status"]),
                completed_at=parse_datetime(data.get("completed_at")),
                comment=data.get("comment"),
                raw=data,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CryptoPayError(NAME, f"malformed transfer: {exc}") from exc


@dataclass(frozen=True)
class Balance:
    asset: str
    available: Decimal
    onhold: Decimal


@dataclass(frozen=True)
class AppInfo:
    app_id: int
    name: str
    payment_processing_bot_username: str


@dataclass(frozen=True)
class WebhookUpdate:
    update_id: int
    update_type: str  # "invoice_paid" is the only type the API sends
    request_date: datetime | None
    invoice: CryptoPayInvoice
