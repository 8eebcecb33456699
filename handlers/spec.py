"""RouterSpec: declare handlers at module level, build a fresh Router per dispatcher.

An aiogram Router can be attached to one dispatcher only, ever; tests and the sandbox
build several apps in one process. Handlers are recorded here and ``build()`` makes a
new ``Router(name=...)`` with them, in declaration order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiogram import F, Router

Handler = Callable[..., Any]


class RouterSpec:
    def __init__(self, name: str, *, private_only: bool = True) -> None:
        self.name = name
        self.private_only = private_only
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
        for observer, filters, handler in self._handlers:
            getattr(router, observer).register(handler, *filters)
        return router
