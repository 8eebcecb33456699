"""Crypto Pay behind the bot's provider interface (SPEC §3; the client is cryptopay.py).

Invoices are priced in USD (``currency_type=fiat``) and accept exactly the asset the
buyer chose, so @CryptoBot converts at payment time: the crypto amount is known only once
paid (``paid_asset``/``paid_amount``), and the statuses say so (``fiat_priced``), which
makes the confirm path compare the USD side and the asset, not a crypto amount fixed in
advance. ``payload`` carries our order reference and must come back unchanged.

Webhooks: one URL per app, set by the operator in @CryptoBot (Crypto Pay → My Apps →
Webhooks) to ``PUBLIC_BASE_URL/payments/cryptopay``; nothing is sent per invoice.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

from pydantic import SecretStr

from services.errors import CurrencyUnavailable, ProviderError
from services.payments.base import (
    ASSETS,
    Invoice,
    PayerRefund,
    PaymentStatus,
    order_reference,
)
from services.payments.cryptopay import CryptoPayClient, CryptoPaySettings
from services.payments.cryptopay_types import NAME, CryptoPayInvoice

# How long a Crypto Pay invoice stays payable; KryptoExpress gives about the same.
INVOICE_SECONDS = 2 * 3600
RATES_SECONDS = 300.0


def required_settings(settings: CryptoPaySettings) -> list[tuple[str, object]]:
    return [("CRYPTO_PAY_TOKEN", settings.crypto_pay_token)]


def build(settings: CryptoPaySettings, callback_url: str | None) -> CryptoPayProvider | None:
    """The provider, or None while it has no token (not configured). ``callback_url`` is
    not sent anywhere: Crypto Pay's webhook URL is set in @CryptoBot (module docstring)."""
    token = _secret(settings.crypto_pay_token)
    if not token:
        return None
    return CryptoPayProvider(CryptoPayClient(token, base_url=settings.crypto_pay_api_url))


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


class CryptoPayProvider:
    name = NAME

    def __init__(self, client: CryptoPayClient) -> None:
        self.client = client
        self._rates: tuple[float, dict[str, Decimal]] | None = None

    async def aclose(self) -> None:
        await self.client.aclose()

    async def available_assets(self) -> dict[str, str]:
        # The assets the buyer chooses between that Crypto Pay takes (it takes them all);
        # the asset is its own code here.
        return {asset: asset for asset in ASSETS}

    async def rate_usd(self, asset: str) -> Decimal | None:
        now = time.monotonic()
        if self._rates is None or now - self._rates[0] > RATES_SECONDS:
            self._rates = (now, await self.client.get_usd_rates())
        return self._rates[1].get(asset)

    async def create_invoice(self, *, order_id: int, amount_usd: Decimal, asset: str) -> Invoice:
        if asset not in ASSETS:
            raise CurrencyUnavailable(asset=asset)
        invoice = await self.client.create_invoice(
            amount_usd=amount_usd,
            accepted_assets=[asset],
            payload=order_reference(order_id),
            expires_in=INVOICE_SECONDS,
            description=f"Order {order_id}",
        )
        if not invoice.bot_invoice_url:
            raise ProviderError(NAME, "createInvoice answered no pay URL")
        return invoice.to_invoice(asset)

    async def fetch_status(self, payment_id: str, payment_hash: str) -> PaymentStatus:
        found = await self.client.get_invoices([int(payment_id)])
        if len(found) != 1:
            raise ProviderError(NAME, f"getInvoices: invoice {payment_id} not found")
        return _status(found[0])

    def parse_callback(self, payload: dict[str, Any]) -> PaymentStatus:
        return _status(CryptoPayInvoice.parse(payload))

    def verify_callback(self, raw_body: bytes, headers: Mapping[str, str]) -> PaymentStatus:
        update = self.client.parse_webhook(raw_body, headers.get("crypto-pay-api-signature"))
        return _status(update.invoice)

    async def refund_to_payer(
        self, *, spend_id: str, user_id: int, asset: str, amount: Decimal
    ) -> PayerRefund:
        """To the buyer's @CryptoBot wallet (their Telegram user id); once per spend_id."""
        transfer = await self.client.transfer(
            user_id=user_id,
            asset=asset,
            amount=amount,
            spend_id=spend_id,
            comment="Refund from AI Token Bot",
        )
        return PayerRefund(
            str(transfer.transfer_id), transfer.asset, transfer.amount, transfer.replayed
        )


def _status(invoice: CryptoPayInvoice) -> PaymentStatus:
    status = invoice.to_status()
    accepted = invoice.accepted_assets[0] if len(invoice.accepted_assets) == 1 else ""
    return replace(
        status,
        # Unpaid, a fiat invoice names no asset of its own: the one it accepts.
        crypto_code=invoice.paid_asset or invoice.asset or accepted,
        fiat_priced=invoice.currency_type == "fiat",
        reference=invoice.payload,
    )
