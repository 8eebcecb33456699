"""Per-update context (the buyer's row, created on first sight, and their translator) and
the request middleware that keeps a late callback answer from aborting its handler."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiogram import BaseMiddleware, Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import TelegramBadRequest
from aiogram.methods import AnswerCallbackQuery, Response, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import TelegramObject, Update, User

from locales import normalize_language, translator
from services.logcontext import bind
from services.users import UserService

log = logging.getLogger(__name__)

# Telegram's answer to a callback query answered too late (or twice).
QUERY_TOO_OLD = "query is too old"


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
    def __init__(self, users: UserService) -> None:
        self.users = users

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
            user = await self.users.ensure_user(
                tg_user.id,
                language=normalize_language(tg_user.language_code),
                first_name=tg_user.first_name,
                username=tg_user.username,
                # "The buyer blocked the bot" must not count as the buyer writing to us.
                writing=not (isinstance(event, Update) and event.my_chat_member is not None),
            )
            data["user"] = user
            data["t"] = translator(user.language)
        return await handler(event, data)


class LateCallbackAnswers(BaseRequestMiddleware):
    """A late tap still acts: Telegram refuses to answer a callback query older than
    about 15 s (a backlog after a restart, a slow provider) with "query is too old", and
    that refusal must not abort the handler that was about to create an invoice. The
    answer is only the spinner and the toast; the handler goes on. ``answer()`` returns
    False then, so a caller that needed the toast can say it in the chat instead."""

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        try:
            return await make_request(bot, method)
        except TelegramBadRequest as exc:
            if not isinstance(exc.method, AnswerCallbackQuery) or QUERY_TOO_OLD not in exc.message:
                raise
            log.debug(
                "callback_answer_too_late query=%s error=%s",
                exc.method.callback_query_id,
                exc.message,
            )
            # The session returns the middleware chain's value as the method's result.
            return cast(Response[TelegramType], False)
