"""What every payment provider offers the bot (SPEC §3), free of any provider's shapes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

# The assets a buyer chooses between, in button order.
ASSETS = ("USDT", "BTC")


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
    # The sum received so far, when the provider reports it. KryptoExpress's documented
    # object does not (it only flips isPaid once the sum covers cryptoAmount): None.
    received_amount: Decimal | None = None


class PaymentProvider(Protocol):
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

    async def aclose(self) -> None: ...
