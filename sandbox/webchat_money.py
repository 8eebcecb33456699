"""The web chat's money panes: the buyer's crypto wallet and the operator's OpenRouter account.

Every button drives an emulator through its control API, so the bot sees exactly what
the real provider would send: a transfer makes KryptoExpress POST its signed callback.
Amounts are Decimal and reach the page as strings (the page only displays them).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from core.clock import utcnow
from db.models import Order, OrderStatus
from sandbox.provider_control import KryptoExpressControl, OpenRouterControl

if TYPE_CHECKING:
    from bot.app import BotApp

WALLET_ACTIONS = ("pay_full", "pay_partial", "pay_late", "expire")
RECENT_ORDERS = 6
CENT = Decimal("0.01")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _usd(value: Any) -> str | None:
    """Dollars with cents ("1.40"), keeping sub-cent usage visible ("0.000123")."""
    if value is None:
        return None
    amount = Decimal(str(value))
    cents = amount.quantize(CENT)
    return str(cents if cents == amount else amount)


class Wallet:
    """The buyer's side of an invoice: pay it, pay part of it, or let its time run out."""

    def __init__(self, kryptoexpress_url: str, app: BotApp) -> None:
        self.kx = KryptoExpressControl(kryptoexpress_url)
        self.app = app

    async def aclose(self) -> None:
        await self.kx.aclose()

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
        payments = {str(p["payment"]["id"]): p for p in await self.kx.payments()}
        views = []
        for order in await self._orders(user_id):
            found = payments.get(order.provider_payment_id or "")
            if found is None:
                continue
            payment = found["payment"]
            views.append(
                {
                    "order_id": order.id,
                    "status": order.status,
                    "payment_id": payment["id"],
                    "currency": payment["cryptoCurrency"],
                    "amount": _text(payment["cryptoAmount"]),
                    "received": _text(found["received_amount"]),
                    "missing": _text(found["missing_amount"]),
                    "fiat": _usd(payment["fiatAmount"]),
                    "paid": bool(payment["isPaid"]),
                    "expired": bool(found["expired"]),
                }
            )
        return views

    async def act(self, user_id: int, payment_id: int, action: str) -> dict[str, Any]:
        if action not in WALLET_ACTIONS:
            raise ValueError(f"unknown wallet action {action!r}")
        order = next(
            (o for o in await self._orders(user_id) if o.provider_payment_id == str(payment_id)),
            None,
        )
        if order is None:
            raise LookupError(f"payment {payment_id} is not an invoice of user {user_id}")
        if action == "pay_partial":
            missing = Decimal(str((await self.kx.payment(payment_id))["missing_amount"]))
            half = (missing / 2).quantize(Decimal("0.000001"), rounding=ROUND_DOWN)
            return await self.kx.pay(payment_id, amount=half, wait=True)
        if action in ("expire", "pay_late"):
            await self._let_expire(order.id, payment_id)
        if action == "expire":
            return {"expired": order.id}
        return await self.kx.pay(payment_id, wait=True)

    async def _let_expire(self, order_id: int, payment_id: int) -> None:
        """The invoice's time runs out on both clocks: the provider's and the bot's.

        Nobody wants to wait two hours in a sandbox, so the bot's copy of the deadline is
        moved to the past (time travel, as the tests do) and its expiry job runs now.
        """
        await self.kx.expire(payment_id)
        async with self.app.sessions() as session, session.begin():
            await session.execute(
                update(Order)
                .where(Order.id == order_id, Order.status == OrderStatus.AWAITING_PAYMENT.value)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        await self.app.processor.expire_overdue()
        self.app.outbox.wake()


class OpenRouterPane:
    """The operator's OpenRouter account: balance and the buyers' keys (never the key text)."""

    def __init__(self, openrouter_url: str, app: BotApp) -> None:
        self.orc = OpenRouterControl(openrouter_url)
        self.app = app

    async def aclose(self) -> None:
        await self.orc.aclose()

    async def view(self) -> dict[str, Any]:
        credits = (await self.orc.credits())["data"]
        keys = [
            {
                "hash": key["hash"],
                "name": key["name"],
                "label": key["label"],
                "limit": _usd(key["limit"]),
                "usage": _usd(key["usage"]),
                "disabled": bool(key["disabled"]),
            }
            for key in await self.orc.keys()
            if not key.get("deleted")
        ]
        return {
            "total_credits": _usd(credits["total_credits"]),
            "total_usage": _usd(credits["total_usage"]),
            "keys": keys,
        }

    async def set_credits(self, total_credits: Decimal) -> None:
        """A smaller balance than an order's cost shows ``awaiting_funds``; raising it
        again re-checks at once (as the admins' `🔄 Re-check balance` does) and delivers."""
        await self.orc.set_credits(total_credits=total_credits)
        await self.app.fulfilment.run_due()
        await self.app.fulfilment.recheck_due()
        self.app.outbox.wake()

    async def spend(self, key_hash: str, amount: Decimal) -> None:
        """The buyer uses the key; the quota sweep (normally every few minutes) runs now
        so a crossed threshold is announced while you watch."""
        await self.orc.spend(key_hash, amount)
        await self.app.alerts.run_quota_sweep()
        self.app.outbox.wake()
