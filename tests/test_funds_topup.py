"""Issue 9 §4: the top-up the admin group is asked for is the real shortfall.

The operator's balance may already be below what buyer keys may spend (usage outside
the bot, a refund paid out of it): that deficit is part of the top-up. Orders waiting
together are served oldest first, so each one's figure counts the deficit and the
orders queued before it. The `🔄 Re-check balance` button under the alert (admins only)
re-measures now; without it a waiting order resumes within FUNDS_RECHECK_SECONDS.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from db.models import FundsLedger, OutboxMessage
from processing.scheduler import JobIntervals
from sandbox.runner import ADMIN_ID
from tests.harness import IDLE, Env, running_env

BUYER = 717171
RECHECK = "🔄 Re-check balance"
STARTER = Decimal("1.65")  # base cost of a Starter order in the emulator


async def _waiting(env: Env, buyer: int) -> int:
    order_id = await env.buy(buyer)
    await env.pay(order_id)
    await env.wait_status(order_id, "awaiting_funds")
    return order_id


async def _funds_alerts(env: Env, order_id: int) -> list[str]:
    return [
        m["plain"]
        for m in await env.tg.messages(env.admin_chat)
        if m["from_bot"] and f"Order #{order_id} awaits funds" in (m["plain"] or "")
    ]


async def _measured_long_ago(env: Env) -> None:
    """Time travel: the shared funds figure is older than its TTL (a deficit that
    arose after the last delivery is only seen by a fresh measurement)."""
    async with env.app.sessions() as session, session.begin():
        await session.execute(update(FundsLedger).values(measured_at=None))


async def _recheck(env: Env) -> str:
    """Tap `🔄 Re-check balance` as the admin; the report it posts."""
    last = max((m["message_id"] for m in await env.tg.messages(env.admin_chat)), default=0)
    pressed = await env.tg.press(ADMIN_ID, RECHECK, chat_id=env.admin_chat)
    await env.tg.callback_answer(pressed["callback_query_id"])
    report = await env.tg.wait_for(
        env.admin_chat,
        lambda m: m["message_id"] > last and "Balance re-checked" in (m["plain"] or ""),
    )
    return str(report["plain"])


async def _limits(env: Env) -> list[Decimal]:
    return sorted(k["limit"] or Decimal(0) for k in await env.orc.keys() if not k["deleted"])


async def _credits_reads(env: Env, after: int) -> list[dict[str, Any]]:
    return [r for r in (await env.orc.requests())[after:] if r["path"].endswith("/credits")]


async def test_the_topup_includes_the_balance_already_short_of_committed(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        first = await env.buy(BUYER)
        await env.pay(first)
        await env.delivered_message(BUYER, first)
        # Spending outside the bot leaves $1.00 against $1.65 still open on the key:
        # the operator is $0.65 short before the next order asks for anything.
        await env.orc.set_credits(total_credits=Decimal("1.00"), total_usage=Decimal("0"))
        await _measured_long_ago(env)
        second = await _waiting(env, BUYER + 1)
        alert = await env.tg.wait_for_text(env.admin_chat, f"Order #{second} awaits funds")
        assert "Top up OpenRouter by exactly $2.30" in alert["plain"], alert["plain"]
        assert "balance $1.00, committed to keys $1.65" in alert["plain"]
        assert alert["plain"].endswith("Paid via kryptoexpress.")
        assert (await env.order(second)).funds_topup_usd == Decimal("2.30")
        # The alert carries both admin buttons. (The order's payment alert, queued just
        # before, may be joined into the same message with its own order button.)
        labels = [b["text"] for row in alert["buttons"] for b in row]
        assert labels[-2:] == [f"🔎 Order #{second}", RECHECK], labels
        assert set(labels) == {f"🔎 Order #{second}", RECHECK}, labels

        # The operator pays exactly what was asked and re-checks: the order goes through.
        await env.orc.set_credits(total_credits=Decimal("3.30"))
        pressed = await env.tg.press(ADMIN_ID, RECHECK, chat_id=env.admin_chat)
        await env.tg.callback_answer(pressed["callback_query_id"])
        await env.delivered_message(BUYER + 1, second)
        assert await _limits(env) == [STARTER, STARTER]
        report = await env.tg.wait_for_text(env.admin_chat, "Balance re-checked")
        assert "1 delivered, 0 still waiting" in report["plain"], report["plain"]
        kinds = [e.kind for e in await env.events(second)]
        assert kinds[-2:] == ["fulfilment_started", "delivered"]


async def test_queued_orders_each_get_the_topup_that_lets_them_through(tmp_path: Path) -> None:
    """Two orders wait: the second's figure counts the first (served first). When the
    first is through, the second's figure changes and the admin group is told once."""
    async with running_env(tmp_path) as env:
        await env.orc.set_credits(total_credits=Decimal("0"), total_usage=Decimal("0"))
        one = await _waiting(env, BUYER)
        two = await _waiting(env, BUYER + 1)
        await env.tg.wait_for_text(env.admin_chat, "Top up OpenRouter by exactly $1.65")
        await env.tg.wait_for_text(env.admin_chat, "Top up OpenRouter by exactly $3.30")
        assert len(await _funds_alerts(env, one)) == 1
        assert len(await _funds_alerts(env, two)) == 1

        # A re-check with nothing changed tells nobody anything new.
        pressed = await env.tg.press(ADMIN_ID, RECHECK, chat_id=env.admin_chat)
        await env.tg.callback_answer(pressed["callback_query_id"])
        await env.tg.wait_for_text(env.admin_chat, "0 delivered, 2 still waiting")
        assert len(await _funds_alerts(env, one)) == 1
        assert len(await _funds_alerts(env, two)) == 1

        # The operator pays the first order's figure: it goes, the second's shrinks.
        await env.orc.set_credits(total_credits=Decimal("1.65"))
        pressed = await env.tg.press(ADMIN_ID, RECHECK, chat_id=env.admin_chat)
        await env.tg.callback_answer(pressed["callback_query_id"])
        await env.delivered_message(BUYER, one)
        await env.tg.wait_for_text(env.admin_chat, "1 delivered, 1 still waiting")
        assert (await env.order(two)).status == "awaiting_funds"
        changed = await env.tg.wait_for_text(env.admin_chat, f"Order #{two} still awaits funds")
        assert "now exactly $1.65" in changed["plain"], changed["plain"]
        assert (await env.order(two)).funds_topup_usd == Decimal("1.65")

        await env.orc.set_credits(total_credits=Decimal("3.30"))
        pressed = await env.tg.press(ADMIN_ID, RECHECK, chat_id=env.admin_chat)
        await env.tg.callback_answer(pressed["callback_query_id"])
        await env.delivered_message(BUYER + 1, two)
        assert await _limits(env) == [STARTER, STARTER]
        changes = [
            m for m in await env.tg.messages(env.admin_chat) if "still awaits funds" in m["plain"]
        ]
        assert len(changes) == 1  # once per figure, not once per re-check


async def test_a_newer_order_does_not_jump_the_queue(tmp_path: Path) -> None:
    """The top-up for the older waiting order arrives; a newer order that would fit
    alone waits behind it, so the figure the admin group was given stays true."""
    async with running_env(tmp_path) as env:
        await env.orc.set_credits(total_credits=Decimal("0"), total_usage=Decimal("0"))
        one = await _waiting(env, BUYER)
        await env.tg.wait_for_text(env.admin_chat, f"Order #{one} awaits funds")
        await env.orc.set_credits(total_credits=Decimal("1.65"))  # exactly what #one needs
        two = await _waiting(env, BUYER + 1)
        alert = await env.tg.wait_for_text(env.admin_chat, f"Order #{two} awaits funds")
        assert "Top up OpenRouter by exactly $1.65" in alert["plain"], alert["plain"]
        assert await _limits(env) == [Decimal(0)] * 2

        pressed = await env.tg.press(ADMIN_ID, RECHECK, chat_id=env.admin_chat)
        await env.tg.callback_answer(pressed["callback_query_id"])
        await env.delivered_message(BUYER, one)
        await env.tg.wait_for_text(env.admin_chat, "1 delivered, 1 still waiting")
        assert (await env.order(two)).status == "awaiting_funds"
        assert await _limits(env) == [Decimal(0), STARTER]
        # #two's figure did not change ($1.65 still), so nothing new was said about it.
        assert not [
            m for m in await env.tg.messages(env.admin_chat) if "still awaits funds" in m["plain"]
        ]


async def test_only_admins_may_recheck_and_it_measures_afresh(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.orc.set_credits(total_credits=Decimal("1.00"), total_usage=Decimal("0"))
        order_id = await _waiting(env, BUYER)
        await env.tg.wait_for_text(env.admin_chat, f"Order #{order_id} awaits funds")
        await env.orc.set_credits(total_credits=Decimal("1.65"))

        before = len(await env.orc.requests())
        stranger = await env.tg.press(BUYER, RECHECK, chat_id=env.admin_chat)
        answer = await env.tg.callback_answer(stranger["callback_query_id"])
        assert "only for the bot's admins" in answer["text"] and answer["show_alert"]
        assert await _credits_reads(env, before) == []
        assert (await env.order(order_id)).status == "awaiting_funds"

        # The shared figure was measured moments ago (well inside its TTL); the button
        # still asks OpenRouter, so a top-up is seen at once.
        before = len(await env.orc.requests())
        pressed = await env.tg.press(ADMIN_ID, RECHECK, chat_id=env.admin_chat)
        await env.tg.callback_answer(pressed["callback_query_id"])
        await env.delivered_message(BUYER, order_id)
        assert len(await _credits_reads(env, before)) >= 1
        assert await _limits(env) == [STARTER]


async def test_waiting_orders_resume_by_themselves_within_the_recheck_interval(
    tmp_path: Path,
) -> None:
    intervals = JobIntervals(
        payment_poll=IDLE, expiry=IDLE, fulfilment=IDLE, prices=IDLE, funds_recheck=1.0
    )
    async with running_env(tmp_path, intervals=intervals, funds_recheck_seconds=1) as env:
        await env.orc.set_credits(total_credits=Decimal("1.00"), total_usage=Decimal("0"))
        order_id = await _waiting(env, BUYER)
        await env.orc.set_credits(total_credits=Decimal("1.65"))
        await env.delivered_message(BUYER, order_id, timeout=4)
        assert await _limits(env) == [STARTER]


async def test_the_queue_follows_payment_not_order_number(tmp_path: Path) -> None:
    """An order created earlier but paid later queues behind the one already waiting."""
    async with running_env(tmp_path) as env:
        await env.orc.set_credits(total_credits=Decimal("0"), total_usage=Decimal("0"))
        early = await env.buy(BUYER)
        late = await env.buy(BUYER + 1)
        await env.pay(late)
        await env.wait_status(late, "awaiting_funds")
        await env.orc.set_credits(total_credits=Decimal("1.65"))  # what #late was told
        await env.pay(early)
        await env.wait_status(early, "awaiting_funds")
        alert = await env.tg.wait_for_text(env.admin_chat, f"Order #{early} awaits funds")
        assert "Top up OpenRouter by exactly $1.65" in alert["plain"], alert["plain"]
        assert "1 delivered, 1 still waiting" in await _recheck(env)
        await env.delivered_message(BUYER + 1, late)
        assert (await env.order(early)).status == "awaiting_funds"


async def test_a_growing_deficit_is_told_once_per_new_figure(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.orc.set_credits(total_credits=Decimal("1.00"), total_usage=Decimal("0"))
        order_id = await _waiting(env, BUYER)
        await env.tg.wait_for_text(env.admin_chat, "Top up OpenRouter by exactly $0.65")
        # The operator spends $0.50 elsewhere: the order now needs $1.15.
        await env.orc.set_credits(total_usage=Decimal("0.50"))
        assert "0 delivered, 1 still waiting" in await _recheck(env)
        told = await env.tg.wait_for_text(env.admin_chat, f"Order #{order_id} still awaits funds")
        assert "now exactly $1.15 (was $0.65" in told["plain"], told["plain"]
        await _recheck(env)  # the same figure again: nothing new to tell
        # The outbox is the record of what was told (a send may still be on its way).
        async with env.app.sessions() as session:
            queued = await session.scalars(
                select(OutboxMessage.text).where(
                    OutboxMessage.text.contains(f"Order #{order_id} still awaits funds")
                )
            )
            assert len(list(queued)) == 1
        assert (await env.order(order_id)).funds_topup_usd == Decimal("1.15")


async def test_a_long_wait_for_funds_does_not_use_up_the_retry_budget(tmp_path: Path) -> None:
    """Waiting for the operator's top-up is not a failed attempt. An order re-checked more
    times than the retry budget still has that budget once the money is there: one
    transient OpenRouter error after the top-up is retried, not the end of the order
    (before, each re-check counted as an attempt and the order ended `failed`)."""
    async with running_env(
        tmp_path, fulfilment={"max_attempts": 3, "retry_base": timedelta(0)}
    ) as env:
        await env.orc.set_credits(total_credits=Decimal("1.00"), total_usage=Decimal("0"))
        order_id = await _waiting(env, BUYER)
        await env.tg.wait_for_text(env.admin_chat, f"Order #{order_id} awaits funds")
        for _ in range(4):  # more re-checks than the retry budget
            assert "0 delivered, 1 still waiting" in await _recheck(env)
        # The operator tops up; the first PATCH then meets a 502 on every client retry.
        await env.orc.set_credits(total_credits=Decimal("1.65"))
        await env.orc.add_fault(path="/api/v1/keys/", method="PATCH", status=502, count=3)
        await _recheck(env)
        assert (await env.order(order_id)).status == "paid"
        await env.app.fulfilment.run_due()
        await env.delivered_message(BUYER, order_id)
        assert await _limits(env) == [STARTER]
        # Every new wait that told a figure was announced once, never twice.
        assert len(await _funds_alerts(env, order_id)) == 1
