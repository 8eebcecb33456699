"""The bot's Telegram profile, set at start: who sees which commands, and what the bot says
about itself before the first /start.

- Buyers' commands in private chats (``BotCommandScopeAllPrivateChats``); the admin
  commands only in the admin group (``BotCommandScopeChat``), so buyers never see them;
  nothing in the default scope, so other groups show no menu.
- The description ("What can this bot do?") and the short description (profile page,
  shared links) in every language of ``locales``; the default language is set without a
  language code, Telegram's fallback for everyone else.

Telegram rate-limits these methods and a restart changes nothing, so each value is read
first and set only when it differs. A refusal is logged and the bot runs on: a stale menu
is no reason not to sell.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import (
    BotCommand,
    BotCommandScopeAllPrivateChats,
    BotCommandScopeChat,
    BotCommandScopeUnion,
)

from locales import DEFAULT_LANGUAGE, LANGUAGES, Translator, telegram_code, translator
from services.admin_chat import AdminChat

log = logging.getLogger(__name__)

# The order is the menu's order.
BUYER_COMMANDS = ("start", "buy", "chat", "quota", "orders", "settings", "lang", "help", "cancel")
ADMIN_COMMANDS = ("stats", "order", "retry", "refund", "balance", "reconcile", "broadcast")


class BotProfile:
    def __init__(self, bot: Bot, admin_chat: AdminChat) -> None:
        self.bot = bot
        self.admin_chat = admin_chat

    async def apply(self) -> None:
        """Bring Telegram's copy of the profile in line with the catalogues."""
        for language in LANGUAGES:
            t = translator(language)
            code = None if language == DEFAULT_LANGUAGE else telegram_code(language)
            buyer = _commands(t, "commands", BUYER_COMMANDS)
            steps: list[tuple[str, Coroutine[Any, Any, None]]] = [
                ("private_commands", self._commands(BotCommandScopeAllPrivateChats(), buyer, code))
            ]
            admin_chat_id = self.admin_chat.id
            if admin_chat_id is not None:
                admin = _commands(t, "admin_commands", ADMIN_COMMANDS)
                scope = BotCommandScopeChat(chat_id=admin_chat_id)
                steps.append(("admin_commands", self._commands(scope, admin, code)))
            steps += [
                ("default_commands", self._clear_default(code)),
                ("description", self._description(t.plain("profile.description"), code)),
                (
                    "short_description",
                    self._short_description(t.plain("profile.short_description"), code),
                ),
            ]
            for name, step in steps:
                try:
                    await step
                except TelegramAPIError as exc:
                    log.warning(
                        "bot_profile_failed step=%s language=%s error=%s", name, language, exc
                    )

    async def _commands(
        self, scope: BotCommandScopeUnion, wanted: list[BotCommand], code: str | None
    ) -> None:
        current = await self.bot.get_my_commands(scope=scope, language_code=code)
        if _pairs(current) != _pairs(wanted):
            await self.bot.set_my_commands(wanted, scope=scope, language_code=code)

    async def _clear_default(self, code: str | None) -> None:
        # Earlier versions put the buyers' menu here, where every group saw it.
        if await self.bot.get_my_commands(language_code=code):
            await self.bot.delete_my_commands(language_code=code)

    async def _description(self, text: str, code: str | None) -> None:
        current = await self.bot.get_my_description(language_code=code)
        if current.description != text:
            await self.bot.set_my_description(text, language_code=code)

    async def _short_description(self, text: str, code: str | None) -> None:
        current = await self.bot.get_my_short_description(language_code=code)
        if current.short_description != text:
            await self.bot.set_my_short_description(text, language_code=code)


def _commands(t: Translator, section: str, names: tuple[str, ...]) -> list[BotCommand]:
    return [BotCommand(command=name, description=t.plain(f"{section}.{name}")) for name in names]


def _pairs(commands: list[BotCommand]) -> list[tuple[str, str]]:
    return [(c.command, c.description) for c in commands]
