"""What real Telegram does that a friendly emulator would not (issue 10): it refuses bad
HTML, refuses to answer a late tap, and hides an anonymous admin behind the group."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sandbox.runner import ADMIN_ID, BOT_TOKEN
from tests.harness import running_env

BUYER = 747474
LINK = '<a href="https://evil.example/">free tokens</a>'


@pytest.mark.parametrize("name", ["Tom & <Jerry>", "<3 Anna", LINK])
async def test_a_buyers_name_is_text_never_markup(tmp_path: Path, name: str) -> None:
    async with running_env(tmp_path) as env:
        await env.tg.send_text(BUYER, "/start", first_name=name)
        greeting = await env.tg.wait_for_text(BUYER, "Here you can buy")
        assert greeting["plain"].startswith(f"👋 Hi, {name}!")
        assert not [e for e in greeting["entities"] if e["type"] == "text_link"]


async def test_a_telegram_refusal_still_gets_the_buyer_an_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.tg.add_fault(
            path=f"/bot{BOT_TOKEN}/sendMessage",
            status=400,
            body={
                "ok": False,
                "error_code": 400,
                "description": "Bad Request: message is too long",
            },
        )
        with caplog.at_level(logging.ERROR, logger="handlers.errors"):
            await env.tg.send_text(BUYER, "/help")
            await env.tg.wait_for_text(BUYER, "Sorry, that can't be done right now.")
        refusal = next(r for r in caplog.records if "telegram_refused_in_handler" in r.message)
        assert "message is too long" in refusal.message and '"/help"' in refusal.message


async def test_a_late_confirm_tap_still_creates_the_invoice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Telegram refuses to answer a query older than ~15 s (a backlog after a restart);
    the order must be created all the same."""
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.open_packages(BUYER)
        await env.choose_package(BUYER)
        await env.tg.set_callback_max_age(0)  # every answer from now on comes too late
        seen = max(e["seq"] for e in await env.tg.events())
        with caplog.at_level(logging.DEBUG, logger="bot.middlewares"):
            order_id = await env.quote_and_confirm(BUYER)
        order = await env.order(order_id)
        assert order.status == "awaiting_payment" and order.provider_payment_id
        payments = await env.kx.payments()
        assert [str(p["payment"]["id"]) for p in payments] == [str(order.provider_payment_id)]
        answers = [
            e
            for e in await env.tg.events(seen, chat_id=BUYER)
            if e["method"] == "answerCallbackQuery"
        ]
        assert answers and not any(e["ok"] for e in answers)
        assert {e["description"] for e in answers} == {
            "Bad Request: query is too old and response timeout expired or query ID is invalid"
        }
        late = [r for r in caplog.records if "callback_answer_too_late" in r.message]
        assert late and {r.levelno for r in late} == {logging.DEBUG}


async def test_an_anonymous_admin_of_the_admin_group_may_use_admin_commands(
    tmp_path: Path,
) -> None:
    async with running_env(tmp_path) as env:
        await env.tg.send_text(ADMIN_ID + 1, "/stats", chat_id=env.admin_chat, as_chat=True)
        answer = await env.tg.wait_for_text(env.admin_chat, "Stats")
        assert "Orders created" in answer["plain"]
