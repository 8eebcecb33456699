"""Chaos buyers: each orders through the Telegram emulator and pays, retrying like a person."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sandbox.control_client import ControlError
from sandbox.cryptopay_model import InvoiceState
from sandbox.provider_control import KryptoExpressControl
from sandbox.telegram_control import TelegramControl, TelegramControlError

if TYPE_CHECKING:
    from bench.chaos_run import ChaosRun

ORDER_RE = re.compile(r"Order #(\d+)")
# USDT and BTC: KryptoExpress, or Crypto Pay while KryptoExpress is out; TON: only
# Crypto Pay takes it.
ASSETS = ("USDT", "BTC", "TON")
ASSET_WEIGHTS = (45, 30, 25)


# --------------------------------------------------------------------- buyers
def _buttons(message: dict[str, Any]) -> list[str]:
    return [b.get("text", "") for row in message.get("buttons") or [] for b in row]


class Buyer:
    STEP_TIMEOUT = 8.0
    MAX_TRIES = 6

    def __init__(self, uid: int, orders: int, run: ChaosRun) -> None:
        self.uid = uid
        self.orders = orders
        self.run = run
        self.rng = random.Random(run.rng.getrandbits(64))

    async def go(self) -> None:
        for _ in range(self.orders):
            await self.think()
            await self.one_order()

    async def think(self) -> None:
        """A person reads before tapping: spreads the orders over the kill window."""
        await asyncio.sleep(self.rng.uniform(0.2, 1.5))

    async def _latest_id(self) -> int:
        return max((m["message_id"] for m in await self.run.tg.messages(self.uid)), default=0)

    async def _wait(self, predicate: Any, what: str) -> dict[str, Any] | None:
        try:
            return await self.run.tg.wait_for(
                self.uid, predicate, timeout=self.STEP_TIMEOUT, description=what
            )
        except AssertionError:
            return None

    async def one_order(self) -> None:
        stats = self.run.stats
        tg = self.run.tg
        tokens = self.rng.randrange(60, 1000) * 1000
        asset = self.rng.choices(ASSETS, ASSET_WEIGHTS)[0]
        for attempt in range(self.MAX_TRIES):
            stats.orders_attempted += 1
            if attempt:
                stats.buyer_retries += 1
            screen = await self._try_buy(tg, tokens, asset)
            if screen is not None:
                await self.pay(screen)
                return
        stats.buyers_gave_up += 1

    async def _try_buy(self, tg: TelegramControl, tokens: int, asset: str) -> dict[str, Any] | None:
        """/buy <tokens> → asset → ✅ Confirm order; the payment screen, or None.

        A step nobody answers (the bot was down) is tapped again; an error answer in
        the chat (a provider failed) sends the buyer back to the start at once.
        """
        before = await self._latest_id()
        await tg.send_text(self.uid, f"/buy {tokens}")
        menu = await self._wait(
            lambda m: m["from_bot"] and m["message_id"] > before, "an answer to /buy"
        )
        if menu is None or asset not in _buttons(menu):
            return None
        await self.think()
        quote = None
        for _ in range(2):
            with contextlib.suppress(TelegramControlError):
                await tg.press(self.uid, asset, message_id=menu["message_id"])
            quote = await self._wait(
                lambda m: (
                    m["message_id"] == menu["message_id"]
                    and not m["deleted"]
                    and "✅ Confirm order" in _buttons(m)
                ),
                "quote",
            )
            if quote is not None:
                break
        if quote is None:
            return None
        await self.think()
        for _ in range(2):
            before = await self._latest_id()
            # A missing keyboard means an earlier tap went through: look for the screen.
            with contextlib.suppress(TelegramControlError):
                await tg.press(self.uid, "✅ Confirm order", message_id=quote["message_id"])
            answer = await self._wait(
                lambda m, after=before: m["from_bot"] and m["message_id"] > after,
                "payment screen",
            )
            if answer is None:
                continue  # nobody answered: tap again
            # KryptoExpress: an address and a QR; Crypto Pay: a button to @CryptoBot.
            if "🔄 Check payment" in _buttons(answer) and ORDER_RE.search(answer["plain"] or ""):
                return answer
            return None  # an error (e.g. the provider failed): start over
        return None

    async def pay(self, screen: dict[str, Any]) -> None:
        if screen.get("photo"):
            await self.pay_kryptoexpress(screen)
        else:
            await self.pay_cryptopay(screen)

    async def pay_kryptoexpress(self, screen: dict[str, Any]) -> None:
        run, stats, rng = self.run, self.run.stats, self.rng
        caption = screen.get("plain") or ""
        match = ORDER_RE.search(caption)
        payment = next(
            (p for p in run.sandbox.kryptoexpress.payments.values() if p.address in caption), None
        )
        if match is None or payment is None:
            run.violations.append(f"payment screen without a known invoice: {caption[:200]!r}")
            return
        stats.invoices_seen += 1
        run.shown[int(match.group(1))] = ("kryptoexpress", str(payment.id))
        choice = rng.random()
        if choice < 0.08:
            return  # changed their mind: never pays
        kx = run.kx
        stale = payment.to_api()  # the unpaid object, replayed later out of order
        if choice < 0.12:
            stats.partial_payments += 1
            half = (payment.crypto_amount / 2).quantize(Decimal("0.00000001"))
            await self._pay(kx, payment.id, amount=half)
            return  # only part arrives: the order must stay unpaid
        if choice < 0.17:
            stats.cancelled_then_paid += 1
            with contextlib.suppress(TelegramControlError):
                await run.tg.press(self.uid, "❌ Cancel order", message_id=screen["message_id"])
            await asyncio.sleep(rng.uniform(0.2, 1.5))
        if rng.random() < 0.3:
            stats.partial_payments += 1
            half = (payment.crypto_amount / 2).quantize(Decimal("0.00000001"))
            await self._pay(kx, payment.id, amount=half)
            await asyncio.sleep(rng.uniform(0.1, 1.0))
        await self._pay(kx, payment.id)
        if rng.random() < 0.4:
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            deliveries = rng.randint(1, 3)
            stats.stale_resends += deliveries
            stats.callbacks_requested += deliveries
            await kx.resend(
                payment.id,
                body_override=stale,
                deliveries=deliveries,
                concurrent=True,
                wait=False,
            )
        if rng.random() < 0.3:
            deliveries = rng.randint(1, 2)
            stats.callbacks_requested += deliveries
            await kx.resend(payment.id, deliveries=deliveries, concurrent=True, wait=False)

    async def _pay(self, kx: KryptoExpressControl, payment_id: int, **options: Any) -> None:
        deliveries = self.rng.randint(1, 5)
        self.run.stats.callbacks_requested += deliveries
        await kx.pay(payment_id, deliveries=deliveries, concurrent=True, wait=False, **options)

    async def pay_cryptopay(self, screen: dict[str, Any]) -> None:
        """Pay in @CryptoBot, in the invoice's asset; the webhook is delivered 1–5 times at
        once, sometimes only after a forged one or a stale (unpaid) one replayed after it,
        sometimes never (polling alone confirms), while ``getInvoices`` polling races it."""
        run, stats, rng = self.run, self.run.stats, self.rng
        match = ORDER_RE.search(screen.get("plain") or "")
        urls = [b.get("url") for row in screen.get("buttons") or [] for b in row if b.get("url")]
        invoice = next(
            (i for i in run.sandbox.cryptopay.invoices.values() if i.to_api()["bot_invoice_url"]
             in urls),
            None,
        )  # fmt: skip
        if match is None or invoice is None:
            run.violations.append(f"Crypto Pay screen without a known invoice: {screen!r:.300}")
            return
        stats.invoices_seen += 1
        stats.cryptopay_invoices_seen += 1
        run.shown[int(match.group(1))] = ("cryptopay", str(invoice.invoice_id))
        choice = rng.random()
        if choice < 0.08:
            return  # changed their mind: never pays
        cp = run.cp
        stale = _update(invoice)  # the unpaid invoice, replayed later out of order
        if choice < 0.13:
            stats.cancelled_then_paid += 1
            with contextlib.suppress(TelegramControlError):
                await run.tg.press(self.uid, "❌ Cancel order", message_id=screen["message_id"])
            await asyncio.sleep(rng.uniform(0.2, 1.5))
        if rng.random() < 0.1:
            stats.forged_webhooks += 1
            await cp.send_webhook(invoice.invoice_id, signature="bad", wait=False)
        webhook = rng.random() >= 0.15
        if not webhook:
            stats.polling_only += 1
        deliveries = rng.randint(1, 5) if webhook else 0
        stats.callbacks_requested += deliveries
        asset = (invoice.accepted_assets or [invoice.asset])[0]
        try:
            await cp.pay(
                invoice.invoice_id,
                asset,
                webhook=webhook,
                deliveries=deliveries,
                concurrent=True,
                wait=False,
            )
        except ControlError:
            return  # expired meanwhile: nothing was paid
        if rng.random() < 0.4:
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            deliveries = rng.randint(1, 3)
            stats.stale_resends += deliveries
            stats.callbacks_requested += deliveries
            await cp.send_webhook(
                invoice.invoice_id,
                body_override=stale,
                deliveries=deliveries,
                concurrent=True,
                wait=False,
            )
        if rng.random() < 0.3:
            deliveries = rng.randint(1, 2)
            stats.callbacks_requested += deliveries
            await cp.send_webhook(
                invoice.invoice_id, deliveries=deliveries, concurrent=True, wait=False
            )


def _update(invoice: InvoiceState) -> dict[str, Any]:
    """An ``invoice_paid`` update as Crypto Pay sends it, with the invoice as it is now."""
    return {
        "update_id": 900_000 + invoice.invoice_id,
        "update_type": "invoice_paid",
        "request_date": "2026-01-01T00:00:00.000Z",
        "payload": invoice.to_api(),
    }
