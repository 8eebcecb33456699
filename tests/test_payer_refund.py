"""`💸 Refund to buyer` (issue 12 item 6): a refunded Crypto Pay order's payment goes back
to the buyer's @CryptoBot wallet with one ``transfer`` whose spend id is the order's, so a
double press, a lost answer or a crash between the transfer and its record pays once."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal
from pathlib import Path
from typing import Any

from processing.admin_ops import payer_refund_spend_id
from sandbox.provider_control import CryptoPayControl
from sandbox.runner import ADMIN_ID
from tests.harness import Env, running_env
from tests.test_cryptopay_buy import BUYER, _confirm_with_kryptoexpress_down, _invoice_of, rails

BUTTON = "💸 Refund to buyer in USDT"
ONE_ATTEMPT = {"max_attempts": 1}


async def _paid_and_refunded(env: Env, cp: CryptoPayControl) -> tuple[int, dict[str, Any]]:
    """A Crypto Pay order paid but never delivered (OpenRouter refused the key: the one
    attempt failed), then refunded by /refund: the case a buyer is owed their money."""
    order_id, _ = await _confirm_with_kryptoexpress_down(env)
    invoice = await _invoice_of(cp, order_id)
    await env.orc.add_fault(path="/api/v1/keys", method="POST", status=503, count=None)
    paid = await cp.pay(invoice["invoice_id"], "USDT")
    await env.wait_status(order_id, "failed")
    await env.tg.send_text(ADMIN_ID, f"/refund {order_id} buyer asked", chat_id=env.admin_chat)
    await env.tg.wait_for_text(env.admin_chat, f"Order #{order_id} marked refunded")
    return order_id, paid["invoice"]


async def _press(env: Env) -> None:
    await env.tg.press(ADMIN_ID, BUTTON, chat_id=env.admin_chat)


async def _refund_messages(env: Env) -> list[str]:
    return [
        m["plain"] or ""
        for m in await env.tg.messages(BUYER)
        if m["from_bot"] and "@CryptoBot wallet" in (m["plain"] or "")
    ]


async def test_the_refund_is_sent_once_whatever_is_pressed_or_lost(tmp_path: Path) -> None:
    async with rails(tmp_path, fulfilment=ONE_ATTEMPT) as (env, cp):
        order_id, invoice = await _paid_and_refunded(env, cp)
        # The answer to the first transfer is lost after Crypto Pay applied it.
        await cp.drop_answer("transfer")
        await _press(env)
        await env.tg.wait_for_text(env.admin_chat, "sent back to the buyer")
        await _press(env)  # a second press
        await env.tg.wait_for_text(env.admin_chat, "was already paid back")

        (transfer,) = await cp.transfers()
        assert transfer["spend_id"] == payer_refund_spend_id(order_id)
        assert transfer["user_id"] == BUYER and transfer["asset"] == "USDT"
        assert Decimal(transfer["amount"]) == Decimal(invoice["paid_amount"])
        kinds = [e.kind for e in await env.events(order_id)]
        assert kinds.count("payer_refunded") == 1
        assert (await env.order(order_id)).status == "refunded"
        await env.tg.wait_for_text(BUYER, "@CryptoBot wallet")
        assert len(await _refund_messages(env)) == 1


async def test_a_crash_between_the_transfer_and_its_record_pays_once(tmp_path: Path) -> None:
    async with rails(tmp_path, fulfilment=ONE_ATTEMPT) as (env, cp):
        order_id, invoice = await _paid_and_refunded(env, cp)
        # An earlier attempt's transfer went through, then the process died before
        # recording it: only the provider knows.
        provider = env.app.providers["cryptopay"]
        await provider.refund_to_payer(  # type: ignore[attr-defined]
            spend_id=payer_refund_spend_id(order_id),
            user_id=BUYER,
            asset="USDT",
            amount=Decimal(invoice["paid_amount"]),
        )
        await _press(env)
        await env.tg.wait_for_text(env.admin_chat, "sent back to the buyer")
        assert len(await cp.transfers()) == 1
        recorded = [e for e in await env.events(order_id) if e.kind == "payer_refunded"]
        assert len(recorded) == 1 and recorded[0].detail["replayed"] is True  # type: ignore[index]


async def test_a_failed_refund_says_why_and_can_be_pressed_again(tmp_path: Path) -> None:
    async with rails(tmp_path, fulfilment=ONE_ATTEMPT) as (env, cp):
        order_id, _ = await _paid_and_refunded(env, cp)
        await cp.set_user_started(BUYER, False)  # the buyer never opened @CryptoBot
        await _press(env)
        failed = await env.tg.wait_for_text(env.admin_chat, "was not sent")
        assert "USER_NOT_FOUND" in failed["plain"] and "by hand" in failed["plain"]
        assert await cp.transfers() == []
        assert (await env.order(order_id)).status == "refunded"
        assert await _refund_messages(env) == []

        await cp.set_user_started(BUYER, True)
        await _press(env)
        await env.tg.wait_for_text(env.admin_chat, "sent back to the buyer")
        assert len(await cp.transfers()) == 1


async def test_a_kryptoexpress_order_offers_no_crypto_refund(tmp_path: Path) -> None:
    async with running_env(tmp_path, fulfilment=ONE_ATTEMPT) as env:
        order_id = await env.buy(BUYER)
        await env.orc.add_fault(path="/api/v1/keys", method="POST", status=503, count=None)
        await env.pay(order_id)
        await env.wait_status(order_id, "failed")
        await env.tg.send_text(ADMIN_ID, f"/refund {order_id} buyer asked", chat_id=env.admin_chat)
        done = await env.tg.wait_for_text(env.admin_chat, f"Order #{order_id} marked refunded")
        assert not done["buttons"]


async def test_two_presses_at_once_pay_once_and_say_so_once(tmp_path: Path) -> None:
    """Found by the chaos run: two presses at the same moment both reached Crypto Pay
    (the second resolved to the first's transfer, one payment) and both answered "sent
    back", as if the buyer had been paid twice. The press that finds the transfer
    already recorded answers "already paid back"."""
    async with rails(tmp_path, fulfilment=ONE_ATTEMPT) as (env, cp):
        order_id, _ = await _paid_and_refunded(env, cp)
        # Both presses are inside the transfer call at once: each waits for the other.
        provider = env.app.providers["cryptopay"]
        real_refund = provider.refund_to_payer  # type: ignore[attr-defined]
        both_in = asyncio.Event()
        calls = 0

        async def refund_when_both_pressed(**kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:
                both_in.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(both_in.wait(), 5)
            return await real_refund(**kwargs)

        provider.refund_to_payer = refund_when_both_pressed  # type: ignore[attr-defined]
        await asyncio.gather(_press(env), _press(env))
        await env.tg.wait_for_text(env.admin_chat, "was already paid back")
        texts = [m["plain"] or "" for m in await env.tg.messages(env.admin_chat)]
        assert sum("sent back to the buyer" in t for t in texts) == 1
        assert len(await cp.transfers()) == 1
        kinds = [e.kind for e in await env.events(order_id)]
        assert kinds.count("payer_refunded") == 1
