"""The web chat's OpenRouter pane: the operator's account (the wallet is webchat_wallet).

Every button drives the emulator through its control API, so the bot sees exactly what
the real provider would answer. Amounts are Decimal and reach the page as strings.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sandbox.provider_control import OpenRouterControl

if TYPE_CHECKING:
    from bot.app import BotApp

CENT = Decimal("0.01")


def usd(value: Any) -> str | None:
    """Dollars with cents ("1.40"), keeping sub-cent usage visible ("0.000123")."""
    if value is None:
        return None
    amount = Decimal(str(value))
    cents = amount.quantize(CENT)
    return str(cents if cents == amount else amount)


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
                "limit": usd(key["limit"]),
                "usage": usd(key["usage"]),
                "disabled": bool(key["disabled"]),
            }
            for key in await self.orc.keys()
            if not key.get("deleted")
        ]
        return {
            "total_credits": usd(credits["total_credits"]),
            "total_usage": usd(credits["total_usage"]),
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
