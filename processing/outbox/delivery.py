"""Turning an outbox row into Telegram messages: the key filled in, long text split."""

from __future__ import annotations

import html
import logging
from typing import Any

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo
from db.models import OutboxMessage
from services.message_text import split_html
from services.notify import API_KEY_SLOT
from services.vault import KeyVault

log = logging.getLogger(__name__)

# Telegram's answer to a message_thread_id it does not know (a deleted topic among them).
TOPIC_GONE = "message thread not found"


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
        thread = payload.get("message_thread_id")
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            reply_markup = markup if last else None
            try:
                await self.bot.send_message(
                    row.chat_id, part, reply_markup=reply_markup, message_thread_id=thread
                )
            except TelegramBadRequest as exc:
                if thread is None or TOPIC_GONE not in str(exc).lower():
                    raise
                # Someone deleted the topic (or ADMIN_TOPIC_* names a wrong one): an alert
                # in the group itself is better than none. Said in the log each time, so
                # the operator fixes the setting.
                log.warning(
                    "admin_topic_missing chat=%s thread=%s category=%s outbox=%s: "
                    "sent to the group itself; check ADMIN_TOPIC_%s",
                    row.chat_id,
                    thread,
                    row.category,
                    row.id,
                    (row.category or "?").upper(),
                )
                thread = None
                await self.bot.send_message(row.chat_id, part, reply_markup=reply_markup)

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
