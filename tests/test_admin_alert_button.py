"""Admin alerts about an order carry a one-tap "🔎 Order #N" button, for admins only."""

from __future__ import annotations

from pathlib import Path

from sandbox.runner import ADMIN_ID
from tests.harness import running_env

BUYER = 313131


async def test_paid_alert_opens_the_order_timeline_for_admins_only(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        alert = await env.tg.wait_for_text(env.admin_chat, f"Paid: order #{order_id}")
        labels = [b["text"] for row in alert["buttons"] for b in row]
        assert labels == [f"🔎 Order #{order_id}"]

        before = len(await env.tg.messages(env.admin_chat))
        # A buyer who is in the group presses it: nothing is shown to them.
        stranger = await env.tg.press(BUYER, f"🔎 Order #{order_id}", chat_id=env.admin_chat)
        await env.tg.callback_answer(stranger["callback_query_id"])
        assert len(await env.tg.messages(env.admin_chat)) == before

        pressed = await env.tg.press(ADMIN_ID, f"🔎 Order #{order_id}", chat_id=env.admin_chat)
        await env.tg.callback_answer(pressed["callback_query_id"])
        view = await env.tg.wait_for(
            env.admin_chat, lambda m: m["from_bot"] and "Timeline" in (m["plain"] or "")
        )
        assert "payment_confirmed" in view["plain"] and "delivered" in view["plain"]
