"""Filters shared by routers."""

from __future__ import annotations

from aiogram.filters import BaseFilter
from aiogram.types import CallbackQuery, Message

from bot.settings import Settings


class IsAdmin(BaseFilter):
    """Only ADMIN_IDS pass; anyone else's admin command falls through to the ordinary
    handlers, which answer as they would to any unknown text (nothing useful leaks)."""

    async def __call__(self, event: Message | CallbackQuery, settings: Settings) -> bool:
        user = event.from_user
        return user is not None and user.id in settings.admin_ids
