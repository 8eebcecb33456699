"""Odd admin arguments and forged callback numbers get an answer, never silence or a
database error (issue 10, item 6)."""

from __future__ import annotations

from pathlib import Path

from sandbox.runner import ADMIN_ID
from tests.harness import Env, running_env
from tests.test_admin import ask

BUYER = 757575
HUGE = "99999999999999999999"  # beyond PostgreSQL's integer and SQLite's 64-bit range
THIRTY = "9" * 30


async def _refused(env: Env, user_id: int, data: str, chat_id: int | None = None) -> None:
    where = chat_id if chat_id is not None else user_id
    message_id = max((m["message_id"] for m in await env.tg.messages(where)), default=1)
    forged = await env.tg.forge_callback(user_id, message_id, data, chat_id=chat_id)
    answer = await env.tg.callback_answer(forged["callback_query_id"])
    assert answer["show_alert"] and "no longer valid" in answer["text"], answer


async def test_order_arguments_get_usage_or_not_found(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        # As alerts write it.
        await ask(env, f"/order #{order_id}", "Timeline")
        # A unicode digit is a digit to str.isdigit(), not to int(): usage, not a crash.
        await ask(env, "/order ²", "Usage: /order")
        await ask(env, "/order ٣", "Usage: /order")
        await ask(env, "/order 1x", "Usage: /order")
        # Beyond the database's integer range: simply not found.
        await ask(env, f"/order {HUGE}", f"Order #{HUGE} not found")
        await ask(env, f"/retry {HUGE}", f"Order #{HUGE} not found")
        await ask(env, f"/refund #{HUGE} paid back", f"Order #{HUGE} not found")
        await ask(env, f"/order {HUGE}", f"Order #{HUGE} not found", chat=env.admin_chat)


async def test_forged_callbacks_with_huge_numbers_are_refused_politely(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await ask(env, "/stats", "Stats")
        await ask(env, "/stats", "Stats", chat=env.admin_chat)
        for data in (f"o:check:{THIRTY}", f"q:ok:{THIRTY}", f"p:{THIRTY}", f"a:{THIRTY}:USDT"):
            await _refused(env, BUYER, data)
        await _refused(env, ADMIN_ID, f"ao:{THIRTY}")
        await _refused(env, ADMIN_ID, f"bc:send:{THIRTY}")
        # In the admin group no fallback answers: the admin routers refuse themselves.
        await _refused(env, ADMIN_ID, f"ao:{THIRTY}", chat_id=env.admin_chat)
        await _refused(env, ADMIN_ID, f"bc:send:{THIRTY}", chat_id=env.admin_chat)
        await _refused(env, ADMIN_ID, "ao:-5", chat_id=env.admin_chat)
        # And the bot is still fine.
        await ask(env, "/order 1", "not found", chat=env.admin_chat)
