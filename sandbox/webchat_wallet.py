"""The web chat's wallet: the buyer pays (or lets expire) their invoices on either rail.

Every button drives the provider's emulator through its control API, so the bot sees
exactly what the real provider would send: a KryptoExpress transfer makes it POST its
signed callback; a Crypto Pay payment makes it POST the signed ``invoice_paid`` webhook.
The bot's DB says which invoices are the buyer's (the emulators know nothing of buyers).
Amounts reach the page as strings (the page only displays them).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from core.clock import utcnow
from db.models import Order, OrderStatus
from sandbox.provider_control import CryptoPayControl, KryptoExpressControl
from sandbox.webchat_money import usd

if TYPE_CHECKING:
    from bot.app import BotApp

KRYPTOEXPRESS, CRYPTOPAY = "kryptoexpress", "cryptopay"
WALLET_ACTIONS = {
    KRYPTOEXPRESS: ("pay_full", "pay_partial", "pay_late", "expire"),
    # A Crypto Pay invoice is paid whole, in one of the assets it accepts, or not at all.
    CRYPTOPAY: ("pay", "expire"),
}
RECENT_ORDERS = 6


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def accepted_assets(invoice: dict[str, Any]) -> list[str]:
    """A fiat invoice's assets (the API may write them as one comma-separated string)."""
    if invoice.get("currency_type") == "crypto":
        return [str(invoice["asset"])]
    value = invoice.get("accepted_assets") or []
    items = value.split(",") if isinstance(value, str) else value
    return [str(item).strip() for item in items if str(item).strip()]


class Wallet:
    """The buyer's side of an invoice: pay it, pay part of it, or let its time run out."""

    def __init__(self, kryptoexpress_url: str, cryptopay_url: str, app: BotApp) -> None:
        self.kx = KryptoExpressControl(kryptoexpress_url)
        self.cp = CryptoPayControl(cryptopay_url)
        self.app = app

    async def aclose(self) -> None:
        await self.kx.aclose()
        await self.cp.aclose()

    async def _orders(self, user_id: int) -> list[Order]:
        """The buyer's latest invoiced orders: the bot DB knows whose payment is whose."""
        async with self.app.sessions() as session:
            rows = await session.execute(
                select(Order)
                .where(Order.user_id == user_id, Order.provider_payment_id.is_not(None))
                .order_by(Order.id.desc())
                .limit(RECENT_ORDERS)
            )
            return list(rows.scalars())

    async def invoices(self, user_id: int) -> list[dict[str, Any]]:
        """One view per invoice, newest first, the same shape for both rails."""
        orders = await self._orders(user_id)
        payments: dict[str, dict[str, Any]] = {}
        if any(_rail(o) == KRYPTOEXPRESS for o in orders):
            payments = {str(p["payment"]["id"]): p for p in await self.kx.payments()}
        invoices: dict[str, dict[str, Any]] = {}
        if any(_rail(o) == CRYPTOPAY for o in orders):
            invoices = {str(i["invoice_id"]): i for i in await self.cp.invoices()}
        views = []
        for order in orders:
            ref = order.provider_payment_id or ""
            if _rail(order) == CRYPTOPAY and ref in invoices:
                views.append(_cryptopay_view(order, invoices[ref]))
            elif _rail(order) == KRYPTOEXPRESS and ref in payments:
                views.append(_kryptoexpress_view(order, payments[ref]))
        return views

    async def act(
        self,
        user_id: int,
        provider: str,
        payment_id: int,
        action: str,
        *,
        asset: str | None = None,
    ) -> dict[str, Any]:
        """Raises ValueError for a request that makes no sense, LookupError for an
        invoice that is not this buyer's; the emulator's refusals raise ControlError."""
        if action not in WALLET_ACTIONS.get(provider, ()):
            raise ValueError(f"unknown wallet action {action!r} for {provider!r}")
        order = next(
            (
                o
                for o in await self._orders(user_id)
                if _rail(o) == provider and o.provider_payment_id == str(payment_id)
            ),
            None,
        )
        if order is None:
            raise LookupError(f"{provider} invoice {payment_id} is not one of user {user_id}")
        if provider == CRYPTOPAY:
            return await self._cryptopay(order.id, payment_id, action, asset)
        if action == "pay_partial":
            missing = Decimal(str((await self.kx.payment(payment_id))["missing_amount"]))
            half = (missing / 2).quantize(Decimal("0.000001"), rounding=ROUND_DOWN)
            return await self.kx.pay(payment_id, amount=half, wait=True)
        if action in ("expire", "pay_late"):
            await self.kx.expire(payment_id)
            await self._expire_in_bot(order.id)
        if action == "expire":
            return {"expired": order.id}
        return await self.kx.pay(payment_id, wait=True)

    async def _cryptopay(
        self, order_id: int, invoice_id: int, action: str, asset: str | None
    ) -> dict[str, Any]:
        if action == "expire":
            await self.cp.expire(invoice_id)
            await self._expire_in_bot(order_id)
            return {"expired": order_id}
        # The buyer picks the asset in @CryptoBot; the invoice says which it takes.
        assets = accepted_assets(await self.cp.invoice(invoice_id))
        chosen = asset or assets[0]
        if chosen not in assets:
            raise ValueError(f"invoice {invoice_id} takes {', '.join(assets)}, not {chosen}")
        # The emulator sets paid_asset/paid_amount/paid_usd_rate, then its signed webhook
        # reaches the bot before this returns.
        return await self.cp.pay(invoice_id, chosen, wait=True)

    async def _expire_in_bot(self, order_id: int) -> None:
        """The invoice's time runs out on the bot's clock too.

        Nobody wants to wait two hours in a sandbox, so the bot's copy of the deadline is
        moved to the past (time travel, as the tests do) and its expiry job runs now.
        """
        async with self.app.sessions() as session, session.begin():
            await session.execute(
                update(Order)
                .where(Order.id == order_id, Order.status == OrderStatus.AWAITING_PAYMENT.value)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        await self.app.processor.expire_overdue()
        self.app.outbox.wake()


def _rail(order: Order) -> str:
    # Orders from before the second rail carry no provider: they were KryptoExpress's.
    return order.provider or KRYPTOEXPRESS


def _kryptoexpress_view(order: Order, found: dict[str, Any]) -> dict[str, Any]:
    payment = found["payment"]
    return {
        "order_id": order.id,
        "status": order.status,
        "provider": KRYPTOEXPRESS,
        "payment_id": payment["id"],
        "currency": payment["cryptoCurrency"],
        "assets": [payment["cryptoCurrency"]],
        "amount": _text(payment["cryptoAmount"]),
        "received": _text(found["received_amount"]),
        "missing": _text(found["missing_amount"]),
        "fiat": usd(payment["fiatAmount"]),
        "paid": bool(payment["isPaid"]),
        "expired": bool(found["expired"]),
    }


def _cryptopay_view(order: Order, invoice: dict[str, Any]) -> dict[str, Any]:
    """A USD invoice: its crypto side exists only once paid (the asset the buyer chose)."""
    assets = accepted_assets(invoice)
    paid = invoice["status"] == "paid"
    return {
        "order_id": order.id,
        "status": order.status,
        "provider": CRYPTOPAY,
        "payment_id": invoice["invoice_id"],
        "currency": invoice.get("paid_asset") or "/".join(assets),
        "assets": assets,
        "amount": _text(invoice.get("paid_amount")),
        "received": _text(invoice.get("paid_amount")) if paid else None,
        "missing": None,
        "fiat": usd(invoice["amount"]),
        "paid": paid,
        "expired": invoice["status"] == "expired",
    }
