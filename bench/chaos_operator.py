"""The chaos run's operator: refunds failed orders with ``/refund`` in the admin group
while buyers buy, and presses ``💸 Refund to buyer`` on refunded Crypto Pay orders."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import TYPE_CHECKING

from sqlalchemy import select

from db.engine import create_engine, session_factory
from db.models import Order
from sandbox.runner import ADMIN_CHAT_ID, ADMIN_ID
from sandbox.telegram_control import TelegramControlError

if TYPE_CHECKING:
    from bench.chaos_run import ChaosRun


PAYER_REFUND = "💸 Refund to buyer"


class Operator:
    def __init__(self, run: ChaosRun) -> None:
        self.run = run
        self.rng = random.Random(run.config.seed * 17 + 9)

    async def work(self, url: str) -> None:
        """While buyers buy, an admin refunds failed orders now and then with /refund."""
        rng = random.Random(self.run.config.seed * 11 + 3)
        while self.run._buying:
            await asyncio.sleep(rng.uniform(2.0, 5.0))
            await self.refund_failed(url)

    async def refund_failed(self, url: str, *, final: bool = False) -> None:
        """``/refund N <note>`` in the admin group for every failed order, through the
        Telegram emulator, as the operator types it. Refused ones (OpenRouter did not
        confirm the key, a delivery held the buyer) are asked again later; the final
        pass, after the faults stop, keeps asking until none is left failed."""
        deadline = time.monotonic() + (120.0 if final else 0.0)
        while True:
            engine = create_engine(url)
            try:
                async with session_factory(engine)() as session:
                    failed = list(
                        (
                            await session.execute(
                                select(Order.id).where(Order.status == "failed").order_by(Order.id)
                            )
                        ).scalars()
                    )
            finally:
                await engine.dispose()
            for order_id in failed:
                await self._refund(order_id)
            if not final or not failed:
                return
            if time.monotonic() > deadline:
                self.run.violations.append(f"orders still failed after the final refunds: {failed}")
                return
            await asyncio.sleep(1.0)

    async def _refund(self, order_id: int) -> None:
        stats, tg = self.run.stats, self.run.tg
        stats.refunds_asked += 1
        before = max((m["message_id"] for m in await tg.messages(ADMIN_CHAT_ID)), default=0)
        await tg.send_text(
            ADMIN_ID, f"/refund {order_id} chaos operator: sent back by hand", chat_id=ADMIN_CHAT_ID
        )
        try:
            answer = await tg.wait_for(
                ADMIN_CHAT_ID,
                lambda m: (
                    m["from_bot"]
                    and m["message_id"] > before
                    and f"Order #{order_id} " in (m["plain"] or "")
                    and "refund" in (m["plain"] or "")
                ),
                # The refund's PATCH and read-back may each take a worst OpenRouter call.
                timeout=75.0,
                description=f"answer to /refund {order_id}",
            )
        except AssertionError:
            stats.refunds_unanswered += 1  # the bot was down: asked again on the next pass
            return
        plain = answer["plain"] or ""
        if "marked refunded (was" in plain:
            stats.refunds_done += 1
        elif "not marked refunded" in plain:
            stats.refunds_refused += 1
        self.run.log(f"/refund {order_id}: {plain[:90]}")
        buttons = [b.get("text", "") for row in answer.get("buttons") or [] for b in row]
        if any(b.startswith(PAYER_REFUND) for b in buttons):
            await self._pay_back(order_id, answer["message_id"])

    async def _pay_back(self, order_id: int, message_id: int) -> None:
        """A Crypto Pay order: press `💸 Refund to buyer`, sometimes twice at once (the
        check: one transfer per order, of what the buyer paid)."""
        stats, tg = self.run.stats, self.run.tg
        before = max((m["message_id"] for m in await tg.messages(ADMIN_CHAT_ID)), default=0)
        presses = 2 if self.rng.random() < 0.5 else 1
        stats.payer_refunds_pressed += presses

        async def press() -> None:
            with contextlib.suppress(TelegramControlError):
                await tg.press(
                    ADMIN_ID,
                    PAYER_REFUND,
                    match="prefix",
                    message_id=message_id,
                    chat_id=ADMIN_CHAT_ID,
                )

        await asyncio.gather(*(press() for _ in range(presses)))
        try:
            answer = await tg.wait_for(
                ADMIN_CHAT_ID,
                lambda m: (
                    m["from_bot"]
                    and m["message_id"] > before
                    and f"Order #{order_id}" in (m["plain"] or "")
                    and ("💸" in (m["plain"] or "") or "not sent" in (m["plain"] or ""))
                ),
                timeout=45.0,
                description=f"answer to 💸 on order {order_id}",
            )
        except AssertionError:
            return  # the bot was down: the transfer may or may not have gone (checked)
        self.run.log(f"💸 {order_id}: {(answer['plain'] or '')[:90]}")
