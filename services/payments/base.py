"""What every payment provider offers the bot (SPEC §3), free of any provider's shapes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

# The assets a buyer may choose between, in button order; the currency step offers
# those some configured provider takes (KryptoExpress: USDT, BTC; Crypto Pay: all).
ASSETS = ("USDT", "BTC", "TON", "ETH", "LTC", "USDC")


@dataclass(frozen=True)
class Invoice:
    provider: str
    payment_id: str
    payment_hash: str
    asset: str  # USDT / BTC
    crypto_code: str  # the provider's code, e.g. USDT_TRC20
    network: str
    crypto_amount: Decimal
    address: str
    fiat_amount: Decimal
    fiat_currency: str
    expires_at: datetime
    raw: dict[str, Any]


@dataclass(frozen=True)
class PaymentStatus:
    """The provider's view of one payment, as a callback or a poll reports it."""

    provider: str
    payment_id: str
    payment_hash: str
    is_paid: bool
    fiat_amount: Decimal
    fiat_currency: str
    crypto_code: str
    crypto_amount: Decimal
    expires_at: datetime | None
    raw: dict[str, Any]
    # The sum received so far, when the provider reports it; None when its payment
    # object only flips "paid" once the sum covers the invoice.
    received_amount: Decimal | None = None
    # Priced in fiat and converted by the provider when paid (Crypto Pay): the crypto
    # amount is not fixed in advance, so only the fiat side and the asset are compared.
    fiat_priced: bool = False
    # Our order reference as the provider echoes it back (Crypto Pay's ``payload``);
    # None when the provider carries none.
    reference: str | None = None


def order_reference(order_id: int) -> str:
    """Our reference on an invoice, where the provider carries one (Crypto Pay's
    ``payload``): which order it pays, checked on every report of it."""
    return f"order:{order_id}"


# One route serves every provider's callbacks (processing/web.py); ``{provider}`` is
# the provider's ``name``.
CALLBACK_ROUTE = "/payments/{provider}"


def callback_path(provider: str) -> str:
    return CALLBACK_ROUTE.format(provider=provider)


class PaymentProvider(Protocol):
    # Also the ``{provider}`` of its callback path and the value stored on the order.
    name: str

    async def available_assets(self) -> dict[str, str]:
        """Asset (USDT/BTC) → the provider's code, for the assets it accepts now."""
        ...

    async def rate_usd(self, asset: str) -> Decimal | None:
        """Approximate USD price of one unit of ``asset`` (for the quote screen)."""
        ...

    async def create_invoice(
        self, *, order_id: int, amount_usd: Decimal, asset: str
    ) -> Invoice: ...

    async def fetch_status(self, payment_id: str, payment_hash: str) -> PaymentStatus: ...

    def parse_callback(self, payload: dict[str, Any]) -> PaymentStatus: ...

    def verify_callback(self, raw_body: bytes, headers: Mapping[str, str]) -> PaymentStatus | None:
        """The payment a callback reports, only if the provider signed this exact body.

        Raises ``CallbackRejected`` (reason ``bad_signature``) when the signature is
        missing or wrong, ``CallbackMalformed`` when a signed body is no payment object;
        fails closed on anything odd. None: authentic, but nothing to apply (e.g. an
        event type the bot does not act on), acknowledged so the provider stops."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class PayerRefund:
    transfer_id: str
    asset: str
    amount: Decimal
    replayed: bool  # an earlier call with the same spend id had already paid it


@runtime_checkable
class RefundsToPayer(Protocol):
    """A provider that can send a payment back to the payer (Crypto Pay's ``transfer``).

    ``spend_id`` makes it exactly-once: a repeat with the same id never pays again and
    answers the first transfer (``replayed``). Raises ``ExternalError`` with the reason
    (payer unknown to the provider, app balance too low, provider down)."""

    async def refund_to_payer(
        self, *, spend_id: str, user_id: int, asset: str, amount: Decimal
    ) -> PayerRefund: ...
