"""Filters shared by routers."""

from __future__ import annotations

from aiogram.filters import BaseFilter
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, Message

from bot.settings import Settings
from services.admin_chat import AdminChat


class IsAdmin(BaseFilter):
    """Only ADMIN_IDS pass, and anonymous admins of the admin group; anyone else's admin
    command falls through to the ordinary handlers, which answer as they would to any
    unknown text (nothing useful leaks)."""

    async def __call__(
        self, event: Message | CallbackQuery, settings: Settings, admin_chat: AdminChat
    ) -> bool:
        if isinstance(event, Message) and _on_behalf_of_admin_group(event, admin_chat):
            return True
        user = event.from_user
        return user is not None and user.id in settings.admin_ids


def _on_behalf_of_admin_group(message: Message, admin_chat: AdminChat) -> bool:
    """An admin of the admin group who writes anonymously: Telegram hides who it is
    (``from`` is @GroupAnonymousBot) and sets ``sender_chat`` to the group itself. Only
    the group's administrators can do that, so the group's word is an admin's word.
    The group's id is the one in use now (``AdminChat`` follows a supergroup upgrade)."""
    sender = message.sender_chat
    return (
        sender is not None and sender.id == message.chat.id and admin_chat.is_admin_chat(sender.id)
    )


class AdminPlace(BaseFilter):
    """A private chat with the bot, or the admin group (under its id now: Telegram gives
    an upgraded group a new one, see ``AdminChat``)."""

    async def __call__(self, event: Message | CallbackQuery, admin_chat: AdminChat) -> bool:
        message = event.message if isinstance(event, CallbackQuery) else event
        if message is None:
            return False
        return message.chat.type == "private" or admin_chat.is_admin_chat(message.chat.id)


class ForgedData(BaseFilter):
    """Callback data with ``factory``'s prefix that does not unpack: forged, or carrying an
    id no row can have. Private chats have the fallback's answer; in the admin group
    nothing else would answer, so routers refuse such presses politely with this."""

    def __init__(self, factory: type[CallbackData]) -> None:
        self.factory = factory

    async def __call__(self, callback: CallbackQuery) -> bool:
        data = callback.data or ""
        if not data.startswith(f"{self.factory.__prefix__}{self.factory.__separator__}"):
            return False
        try:
            self.factory.unpack(data)
        except (TypeError, ValueError):  # pydantic's ValidationError is a ValueError
            return True
        return False


# An admin's command or press, in a place admins use: the one check every admin route takes.
ADMIN_ONLY = (IsAdmin(), AdminPlace())
