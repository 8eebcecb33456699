"""Turning an outbox row into Telegram messages: the key filled in, long text split."""

from __future__ import annotations

import html
from typing import Any

from aiogram import Bot
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo
from db.models import OutboxMessage
from services.message_text import split_html
from services.notify import API_KEY_SLOT
from services.vault import KeyVault


class Delivery:
    """Part of ``OutboxSender`` (a mixin sharing its instance)."""

    sessions: async_sessionmaker[AsyncSession]
    bot: Bot
    vault: KeyVault

    async def _deliver(self, row: OutboxMessage) -> None:
        payload: dict[str, Any] = row.payload or {}
        text = row.text
        if API_KEY_SLOT in text:
            text = text.replace(API_KEY_SLOT, html.escape(await self._secret_key(payload)))
        markup = inline_keyboard(payload.get("buttons"))
        # A long report goes as several messages (buttons under the last). A failure
        # part-way resends the earlier parts too: at-least-once, as for any message.
        parts = split_html(text)
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            await self.bot.send_message(row.chat_id, part, reply_markup=markup if last else None)

    async def _secret_key(self, payload: dict[str, Any]) -> str:
        user_id = int(payload["secret_key_of"])
        async with self.sessions() as session:
            key = await repo.get_api_key(session, user_id)
        if key is None:
            raise LookupError(f"no stored key for user {user_id}")
        return self.vault.decrypt(key.encrypted_key)


def inline_keyboard(buttons: Any) -> InlineKeyboardMarkup | None:
    if not buttons:
        return None
    return InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(**button) for button in row] for row in buttons]
    )
