"""Filters shared by routers."""

from __future__ import annotations

from aiogram.filters import BaseFilter
from aiogram.types import CallbackQuery, Message

from bot.settings import Settings


class IsAdmin(BaseFilter):
    """Only ADMIN_IDS pass, and anonymous admins of the admin group; anyone else's admin
    command falls through to the ordinary handlers, which answer as they would to any
    unknown text (nothing useful leaks)."""

    async def __call__(self, event: Message | CallbackQuery, settings: Settings) -> bool:
        if isinstance(event, Message) and _on_behalf_of_admin_group(event, settings):
            return True
        user = event.from_user
        return user is not None and user.id in settings.admin_ids


def _on_behalf_of_admin_group(message: Message, settings: Settings) -> bool:
    """An admin of the admin group who writes anonymously: Telegram hides who it is
    (``from`` is @GroupAnonymousBot) and sets ``sender_chat`` to the group itself. Only
    the group's administrators can do that, so the group's word is an admin's word."""
    sender = message.sender_chat
    return (
        sender is not None
        and settings.admin_chat_id is not None
        and sender.id == message.chat.id == settings.admin_chat_id
    )
