"""The bot's Telegram profile, set at start (issue 13, item 8): buyers' commands in private
chats, admin commands only in the admin group, and the description and short description
in every language the catalogues provide. Set only what differs (Telegram rate-limits
these calls, and a restart changes nothing), and a refusal never stops the bot."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from bot.profile import ADMIN_COMMANDS, BUYER_COMMANDS
from locales import DEFAULT_LANGUAGE, LANGUAGES, telegram_code, translator
from sandbox.runner import ADMIN_CHAT_ID, BOT_TOKEN
from tests.harness import Env, running_env

PROFILE_CALLS = ("setMyCommands", "deleteMyCommands", "setMyDescription", "setMyShortDescription")


def _code(language: str) -> str:
    # The default language is everybody's fallback (no language_code); Telegram takes
    # two-letter codes ("pt" for pt-BR, "zh" for zh-Hans).
    return "" if language == DEFAULT_LANGUAGE else telegram_code(language)


async def _commands(env: Env) -> dict[tuple[str, int | None, str], list[str]]:
    return {
        (e["scope"]["type"], e["scope"].get("chat_id"), e["language_code"]): [
            c["command"] for c in e["commands"]
        ]
        for e in (await env.tg.state())["commands"]
    }


async def _profile_calls(env: Env, after: int = 0) -> list[dict[str, Any]]:
    return [e for e in await env.tg.events(after) if e["method"] in PROFILE_CALLS]


async def test_commands_are_scoped_and_descriptions_set_per_language(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        commands = await _commands(env)
        expected = {}
        for language in LANGUAGES:
            expected[("all_private_chats", None, _code(language))] = list(BUYER_COMMANDS)
            expected[("chat", ADMIN_CHAT_ID, _code(language))] = list(ADMIN_COMMANDS)
        # Nothing in the default scope: other groups see no command list at all.
        assert commands == expected
        assert not set(ADMIN_COMMANDS) & set(BUYER_COMMANDS)

        state = await env.tg.state()
        entries = {(e["scope"]["type"], e["language_code"]): e for e in state["commands"]}
        ru_menu = entries[("all_private_chats", "ru")]["commands"]
        assert ru_menu[0]["description"] == translator("ru").plain("commands.start")
        texts = {(t["field"], t["language_code"]): t["value"] for t in state["bot_texts"]}
        for language in LANGUAGES:
            t = translator(language)
            assert texts[("description", _code(language))] == t.plain("profile.description")
            assert texts[("short_description", _code(language))] == t.plain(
                "profile.short_description"
            )

        # Again (a restart): Telegram already has all of it, so nothing is set twice.
        seq = (await env.tg.state())["seq"]
        await env.app.profile.apply()
        assert await _profile_calls(env, seq) == []
        assert await _commands(env) == expected


async def test_a_refused_profile_call_is_logged_and_the_bot_still_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.profile")

    async def configure(sandbox: Any) -> None:
        from sandbox.telegram_control import TelegramControl

        async with TelegramControl(sandbox.telegram_url) as tg:
            await tg.add_fault(
                path=f"/bot{BOT_TOKEN}/setMyDescription",
                status=400,
                body={"ok": False, "error_code": 400, "description": "Bad Request: injected"},
                count=None,
            )

    async with running_env(tmp_path, configure=configure) as env:
        assert any("bot_profile_failed" in r.getMessage() for r in caplog.records)
        # The rest of the profile is set, and the bot answers.
        assert ("all_private_chats", None, "") in await _commands(env)
        await env.start_chat(424243)
        assert await env.tg.last_message(424243) is not None


def test_profile_texts_fit_telegrams_limits() -> None:
    for language in LANGUAGES:
        t = translator(language)
        assert 1 <= len(t.plain("profile.description")) <= 512
        assert 1 <= len(t.plain("profile.short_description")) <= 120
        for command in (*BUYER_COMMANDS, *ADMIN_COMMANDS):
            key = (
                f"commands.{command}" if command in BUYER_COMMANDS else f"admin_commands.{command}"
            )
            assert t.has(key), (language, key)
            assert 1 <= len(t.plain(key)) <= 256
