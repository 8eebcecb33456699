"""RouterSpec: declare handlers at module level, build a fresh Router per dispatcher.

An aiogram Router can be attached to one dispatcher only, ever; tests and the sandbox
build several apps in one process. Handlers are recorded here and ``build()`` makes a
new ``Router(name=...)`` with them, in declaration order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import F, Router
from aiogram.types import TelegramObject

from locales import translator

Handler = Callable[..., Any]


class RouterSpec:
    def __init__(self, name: str, *, private_only: bool = True, admin: bool = False) -> None:
        self.name = name
        self.private_only = private_only
        # Admin routers answer in ADMIN_LANGUAGE, as the alerts and reports do.
        self.admin = admin
        self._handlers: list[tuple[str, tuple[Any, ...], Handler]] = []

    def _record(self, observer: str, filters: tuple[Any, ...]) -> Callable[[Handler], Handler]:
        def decorator(handler: Handler) -> Handler:
            self._handlers.append((observer, filters, handler))
            return handler

        return decorator

    def message(self, *filters: Any) -> Callable[[Handler], Handler]:
        return self._record("message", filters)

    def callback_query(self, *filters: Any) -> Callable[[Handler], Handler]:
        return self._record("callback_query", filters)

    def my_chat_member(self, *filters: Any) -> Callable[[Handler], Handler]:
        return self._record("my_chat_member", filters)

    def stopped_message_generation(self, *filters: Any) -> Callable[[Handler], Handler]:
        return self._record("stopped_message_generation", filters)

    def error(self, *filters: Any) -> Callable[[Handler], Handler]:
        return self._record("errors", filters)

    def build(self) -> Router:
        router = Router(name=self.name)
        if self.private_only:
            # Buyers talk to the bot only in private; group chats belong to the admins.
            router.message.filter(F.chat.type == "private")
            router.callback_query.filter(F.message.chat.type == "private")
            router.my_chat_member.filter(F.chat.type == "private")
        if self.admin:
            router.message.middleware(_admin_language)
            router.callback_query.middleware(_admin_language)
        for observer, filters, handler in self._handlers:
            getattr(router, observer).register(handler, *filters)
        return router


async def _admin_language(
    handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
    event: TelegramObject,
    data: dict[str, Any],
) -> Any:
    settings = data.get("settings")
    if settings is not None:
        data["t"] = translator(settings.admin_language)
    return await handler(event, data)
