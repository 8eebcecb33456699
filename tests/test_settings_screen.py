"""⚙️ Settings: toggles show their state, pressing flips the stored flag, forged data is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from db.models import User
from tests.harness import running_env

BUYER = 626262


def _labels(message: dict[str, Any]) -> list[str]:
    return [b["text"] for row in message.get("buttons") or [] for b in row]


async def _flags(env: Any, user_id: int) -> tuple[bool, bool, bool]:
    async with env.app.sessions() as session:
        row = (
            await session.execute(
                select(User.notify_quota, User.notify_reminders, User.daily_summary).where(
                    User.id == user_id
                )
            )
        ).one()
        return bool(row[0]), bool(row[1]), bool(row[2])


async def test_settings_toggles_flip_the_stored_flags(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        # From the main menu button.
        await env.tg.press(BUYER, "⚙️ Settings")
        screen = await env.tg.wait_for(BUYER, lambda m: "Low-quota alerts" in str(_labels(m)))
        assert _labels(screen) == [
            "✅ Low-quota alerts",
            "✅ Payment reminders",
            "❌ Daily usage summary",
            "🏠 Menu",
        ]
        assert await _flags(env, BUYER) == (True, True, False)

        await env.tg.press(BUYER, "❌ Daily usage summary")
        await env.tg.wait_for(BUYER, lambda m: "✅ Daily usage summary" in _labels(m))
        assert await _flags(env, BUYER) == (True, True, True)

        await env.tg.press(BUYER, "✅ Low-quota alerts")
        await env.tg.wait_for(BUYER, lambda m: "❌ Low-quota alerts" in _labels(m))
        await env.tg.press(BUYER, "✅ Payment reminders")
        screen = await env.tg.wait_for(BUYER, lambda m: "❌ Payment reminders" in _labels(m))
        assert await _flags(env, BUYER) == (False, False, True)
        # Re-rendered in place: the same message, not a new one.
        assert screen["message_id"] == (await env.tg.last_message(BUYER) or {})["message_id"]

        # /settings shows the stored state; pressing again switches back.
        await env.tg.send_text(BUYER, "/settings")
        screen = await env.tg.wait_for(
            BUYER, lambda m: m["from_bot"] and "❌ Low-quota alerts" in _labels(m)
        )
        assert "Settings" in (screen["plain"] or "")
        await env.tg.press(BUYER, "❌ Low-quota alerts")
        await env.tg.wait_for(BUYER, lambda m: "✅ Low-quota alerts" in _labels(m))
        assert await _flags(env, BUYER) == (True, False, True)


async def test_forged_settings_callback_changes_nothing(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.tg.send_text(BUYER, "/settings")
        screen = await env.tg.wait_for(BUYER, lambda m: "✅ Low-quota alerts" in _labels(m))
        before = await _flags(env, BUYER)
        pressed = await env.tg.forge_callback(BUYER, screen["message_id"], "st:notify_quota")
        answer = await env.tg.callback_answer(pressed["callback_query_id"])
        assert "no longer valid" in (answer.get("text") or "")
        assert await _flags(env, BUYER) == before


async def test_settings_in_russian(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.tg.send_text(BUYER, "/start", language_code="ru")
        await env.tg.wait_for(BUYER, lambda m: "⚙️ Настройки" in _labels(m))
        await env.tg.press(BUYER, "⚙️ Настройки")
        await env.tg.wait_for(BUYER, lambda m: "❌ Ежедневная сводка расхода" in _labels(m))
        await env.tg.press(BUYER, "❌ Ежедневная сводка расхода")
        await env.tg.wait_for(BUYER, lambda m: "✅ Ежедневная сводка расхода" in _labels(m))
        assert await _flags(env, BUYER) == (True, True, True)
