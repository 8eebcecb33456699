"""Per-update context: the buyer's row (created on first sight) and their translator."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, Update, User

from locales import normalize_language, translator
from services.logcontext import bind
from services.orders import OrderService


class LogContextMiddleware(BaseMiddleware):
    """Binds update_id and the sender's user_id to every log line of this update."""

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        tg_user: User | None = data.get("event_from_user")
        update_id = event.update_id if isinstance(event, Update) else None
        with bind(update_id=update_id, user_id=tg_user.id if tg_user else None):
            return await handler(event, data)


class UserContextMiddleware(BaseMiddleware):
    def __init__(self, orders: OrderService) -> None:
        self.orders = orders

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        tg_user: User | None = data.get("event_from_user")
        chat = data.get("event_chat")
        # Mutate ``data`` in place: the error router sees the same dict.
        data["t"] = translator(tg_user.language_code if tg_user else None)
        data["user"] = None
        if tg_user is not None and not tg_user.is_bot and (chat is None or chat.type == "private"):
            user = await self.orders.ensure_user(
                tg_user.id,
                language=normalize_language(tg_user.language_code),
                first_name=tg_user.first_name,
                username=tg_user.username,
            )
            data["user"] = user
            data["t"] = translator(user.language)
        return await handler(event, data)
