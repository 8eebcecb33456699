"""Admin commands end to end: the admin in private and in the admin group, a buyer trying them."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from core.money import format_usd
from sandbox.runner import ADMIN_ID
from tests.harness import Env, running_env

BUYER = 717171
BUYER2 = 727272
BUYER3 = 737373
UNKNOWN = "I didn't understand that."
AUTH_FAULT = {
    "path": "/api/v1/keys",
    "status": 401,
    "count": None,
    "body": {"error": {"code": 401, "message": "Invalid credentials"}},
}


async def ask(env: Env, text: str, expect: str, *, chat: int | None = None) -> dict[str, Any]:
    """Send ``text`` as the admin and wait for the bot's answer containing ``expect``."""
    where = chat if chat is not None else ADMIN_ID
    before = max((m["message_id"] for m in await env.tg.messages(where)), default=0)
    await env.tg.send_text(ADMIN_ID, text, chat_id=chat)
    return await env.tg.wait_for(
        where,
        lambda m: m["from_bot"] and m["message_id"] > before and expect in (m["plain"] or ""),
        description=f"answer to {text!r} containing {expect!r}",
    )


async def delivered(env: Env, user_id: int) -> int:
    order_id = await env.buy(user_id)
    await env.pay(order_id)
    await env.wait_status(order_id, "delivered")
    return order_id


async def failed(env: Env, user_id: int) -> int:
    order_id = await env.buy(user_id)
    await env.orc.add_fault(**AUTH_FAULT)
    await env.pay(order_id)
    await env.wait_status(order_id, "failed")
    await env.orc.clear_faults()
    return order_id


async def test_order_retry_refund_balance_stats(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        a = await delivered(env, BUYER)
        b = await failed(env, BUYER2)
        c = await failed(env, BUYER3)

        # /order: the whole story, event by event.
        view = await ask(env, f"/order {a}", f"Order #{a}")
        text = view["plain"]
        for kind in ("order_created", "payment_confirmed", "fulfilment_started", "delivered"):
            if any(e.kind == kind for e in await env.events(a)):
                assert kind in text, text
        assert "awaiting_payment → paid" in text and "fulfilling → delivered" in text
        assert str(BUYER) in text and "Timeline" in text

        # /retry brings the failed order home once OpenRouter accepts the key again.
        answer = await ask(env, f"/retry {b}", f"Order #{b}: failed → paid")
        assert "Now: delivered" in answer["plain"]
        await env.delivered_message(BUYER2, b)
        retry_events = [e for e in await env.events(b) if e.kind == "admin_retry"]
        assert len(retry_events) == 1 and retry_events[0].actor == f"admin:{ADMIN_ID}"
        assert (retry_events[0].from_status, retry_events[0].to_status) == ("failed", "paid")
        await ask(env, f"/retry {b}", "/retry works for failed")  # delivered now: refused
        # A retry is no refund: the buyer hears of the delivery, never "was refunded".
        assert not [
            m for m in await env.tg.messages(BUYER2) if m["from_bot"] and "refunded" in m["plain"]
        ]

        # /refund: never a delivered order, never without a note; a failed one with a note.
        await ask(env, f"/refund {a} sent it back", "cannot be marked refunded")
        assert (await env.order(a)).status == "delivered"
        await ask(env, f"/refund {c}", "note")
        assert (await env.order(c)).status == "failed"
        await ask(env, f"/refund {c} returned 5 USDT, tx abc123", "marked refunded (was failed)")
        refunded = await env.order(c)
        assert refunded.status == "refunded"
        assert refunded.refund_note == "returned 5 USDT, tx abc123"
        event = (await env.events(c))[-1]
        assert (event.kind, event.actor) == ("refunded", f"admin:{ADMIN_ID}")
        # The buyer hears of it once, without the admins' note.
        told = await env.tg.wait_for_text(BUYER3, f"Order #{c} was refunded")
        assert "returning your payment" in told["plain"] and "abc123" not in told["plain"]
        await ask(env, "/refund 99999 whatever", "Order #99999 not found")

        # /balance: the emulator's own figures.
        credits = (await env.orc.credits())["data"]
        available = Decimal(str(credits["total_credits"])) - Decimal(str(credits["total_usage"]))
        keys = [k for k in await env.orc.keys() if not k["deleted"]]
        committed = sum(
            (Decimal(str(k["limit"])) - Decimal(str(k["usage"])) for k in keys), Decimal(0)
        )
        answer = await ask(env, "/balance", "OpenRouter balance")
        assert f"balance {format_usd(available)}" in answer["plain"]
        unit = "key" if len(keys) == 1 else "keys"
        assert f"committed to {len(keys)} {unit} {format_usd(committed)}" in answer["plain"]
        assert f"headroom {format_usd(available - committed)}" in answer["plain"]

        # /stats in the admin group: a, b delivered; c failed then refunded.
        orders = {o.id: o for o in await env.orders()}
        revenue = orders[a].total_usd + orders[b].total_usd
        markup = orders[a].markup_usd + orders[b].markup_usd
        answer = await ask(env, "/stats", "Stats", chat=env.admin_chat)
        stats = answer["plain"]
        assert "Orders created: 3 · paid: 3 · delivered: 2" in stats, stats
        assert f"Revenue: {format_usd(revenue)}" in stats
        assert f"markup earned {format_usd(markup)}" in stats
        assert "Failed: 2 · refunded: 1 · expired: 0" in stats
        assert f"Paid by provider: kryptoexpress 2 ({format_usd(revenue)})" in stats, stats
        await ask(env, "/stats 7d", "Orders created: 3")
        await ask(env, "/stats forever", "Usage: /stats")


async def test_buyers_get_nothing_from_admin_commands(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.update_order(order_id, status="failed")
        events_before = len(await env.events(order_id))
        commands = [
            "/stats",
            f"/order {order_id}",
            f"/retry {order_id}",
            f"/refund {order_id} take it",
            "/balance",
            "/reconcile",
        ]
        for command in commands:
            before = max((m["message_id"] for m in await env.tg.messages(BUYER)), default=0)
            await env.tg.send_text(BUYER, command)
            reply = await env.tg.wait_for(
                BUYER,
                lambda m, n=before: m["from_bot"] and m["message_id"] > n and UNKNOWN in m["plain"],
            )
            assert "Order #" not in reply["plain"] and "Stats" not in reply["plain"]
        # In the admin group a non-admin gets silence.
        await env.tg.send_text(BUYER, "/stats", chat_id=env.admin_chat)
        await env.tg.send_text(BUYER, f"/refund {order_id} take it", chat_id=env.admin_chat)
        # The admin's command after them is answered; nothing came before it.
        await ask(env, f"/order {order_id}", f"Order #{order_id}", chat=env.admin_chat)
        group = [m for m in await env.tg.messages(env.admin_chat) if m["from_bot"]]
        assert not any("Stats" in (m["plain"] or "") for m in group)
        assert not any("refunded" in (m["plain"] or "") for m in group)
        order = await env.order(order_id)
        assert order.status == "failed" and order.refund_note is None
        assert len(await env.events(order_id)) == events_before
        openrouter_calls = [r for r in await env.orc.requests() if r["path"].endswith("/keys")]
        assert openrouter_calls == []  # no /balance or /reconcile ran for the buyer


async def test_reconcile_finds_planted_mismatches(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        a = await delivered(env, BUYER)
        b = await delivered(env, BUYER2)
        answer = await ask(env, "/reconcile", "Reconciliation")
        assert "checked 2 payments and 2 keys" in answer["plain"]
        assert "No mismatches" in answer["plain"]

        # Plant: a key limit changed behind our back, and an order the provider says is paid.
        key = await env.api_key(BUYER)
        assert key is not None
        await env.app.openrouter.set_key_limit(key.openrouter_hash, Decimal("7.00"))
        await env.update_order(b, status="expired")
        ledger = (await env.order(a)).base_usd
        answer = await ask(env, "/reconcile", "Reconciliation")
        text = answer["plain"]
        assert "No mismatches" not in text
        assert (
            f"order #{b} (user {BUYER2}" in text
            and "is expired but kryptoexpress says it is paid" in text
        )
        assert f"user {BUYER}: key limit at OpenRouter $7.00" in text
        assert f"ledger (Σ base of delivered orders) {format_usd(ledger)}" in text
        # The delivered order b no longer counts in the ledger either: its key is over.
        assert f"user {BUYER2}: key limit" in text
        await env.tg.wait_for_text(env.admin_chat, f"Reconciliation mismatch: order #{b}")
        await env.tg.wait_for_text(env.admin_chat, f"Reconciliation mismatch: user {BUYER}:")

        # Running it again reports the same, and alerts nothing new.
        alerts = [m for m in await env.outbox() if (m.dedupe_key or "").startswith("reconcile:")]
        assert len(alerts) == 3
        await ask(env, "/reconcile", "Reconciliation")
        again = [m for m in await env.outbox() if (m.dedupe_key or "").startswith("reconcile:")]
        assert len(again) == 3


async def test_an_order_needing_the_operator_is_listed_until_marked_settled(
    tmp_path: Path,
) -> None:
    """An overpaid order is flagged; /stats lists it, /order offers ✔️ Mark settled, and
    one press (by an admin, once) clears it with an event naming who."""
    async with running_env(tmp_path) as env:
        await env.kx.set_options(report_received=True)
        order_id = await delivered(env, BUYER)
        await env.pay(order_id, amount=Decimal("0.50"))  # more than invoiced
        await env.tg.wait_for_text(env.admin_chat, "received more than invoiced")
        assert (await env.order(order_id)).attention == "overpaid"

        stats = await ask(env, "/stats", "Orders created")
        assert f"Need you: #{order_id} " in stats["plain"]
        group = env.admin_chat
        view = await ask(env, f"/order {order_id}", "Needs the operator", chat=group)

        # Someone else in the group presses it: refused, nothing changes.
        outsider = await env.tg.press(
            BUYER2, "✔️ Mark settled", message_id=view["message_id"], chat_id=group
        )
        assert (
            "only for the bot's admins"
            in (await env.tg.callback_answer(outsider["callback_query_id"]))["text"]
        )
        assert (await env.order(order_id)).attention == "overpaid"

        await env.tg.press(ADMIN_ID, "✔️ Mark settled", message_id=view["message_id"], chat_id=group)
        await env.tg.wait_for_text(group, f"Order #{order_id}: marked settled")
        assert (await env.order(order_id)).attention is None
        settled = [e for e in await env.events(order_id) if e.kind == "attention_settled"]
        assert len(settled) == 1 and settled[0].actor == f"admin:{ADMIN_ID}"
        assert settled[0].detail == {"reason": "overpaid"}

        await env.tg.press(ADMIN_ID, "✔️ Mark settled", message_id=view["message_id"], chat_id=group)
        await env.tg.wait_for_text(group, "nothing waiting for the operator")
        assert len([e for e in await env.events(order_id) if e.kind == "attention_settled"]) == 1
        stats = await ask(env, "/stats", "Orders created")
        assert "Need you" not in stats["plain"]
        view = await ask(env, f"/order {order_id}", f"Order #{order_id}")
        assert "Needs the operator" not in view["plain"] and not view.get("reply_markup")
