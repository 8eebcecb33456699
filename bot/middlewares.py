"""Per-update context (the buyer's row, created on first sight, and their translator) and
the request middlewares: one keeps a late callback answer from aborting its handler, one
watches every Telegram call for /metrics and /readyz."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiogram import BaseMiddleware, Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods import AnswerCallbackQuery, Response, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import TelegramObject, Update, User

from core.metrics import Metrics
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


class KeepResponseTypes(BaseRequestMiddleware):
    """Keeps each Bot API method's ``Response[...]`` class alive for the process's life.

    aiogram's session parses every answer with ``Response[method.__returning__]``
    (aiogram/client/session/base.py, ``check_response``). pydantic caches parametrized
    generic models in a ``WeakValueDictionary`` (pydantic/_internal/_generics.py,
    ``_GENERIC_TYPES_CACHE``; weak since pydantic/pydantic#5052, discussed in
    pydantic/pydantic#5125), and nothing else holds the class once the answer is parsed,
    so the garbage collector frees it and the next call of that method rebuilds its
    schema and validator: about 1 ms each time, 29 % of the CPU of an update in the
    profile of issue 14. One strong reference per method class, taken before the call,
    makes every later ``Response[...]`` a cache hit (a dict lookup)."""

    def __init__(self) -> None:
        self.kept: dict[type[TelegramMethod[Any]], type[Response[Any]]] = {}

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        kind = type(method)
        if kind not in self.kept:
            self.kept[kind] = Response[method.__returning__]  # type: ignore[name-defined]
        return await make_request(bot, method)


class TelegramWatch(BaseRequestMiddleware):
    """Every call to Telegram (sends, polling, webhook setup) reports how it went: a 429
    is counted for /metrics, and whether Telegram answered at all feeds /readyz. Any
    answer, an error included, shows Telegram reachable and the token valid; no answer,
    a 5xx or a 401 (token revoked) does not."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        seen = self.metrics.telegram
        try:
            response = await make_request(bot, method)
        except TelegramRetryAfter:
            self.metrics.telegram_429.labels(method=method.__api_method__).inc()
            seen.ok()
            raise
        except TelegramNetworkError as exc:
            self._unreachable("network", exc)
            raise
        except TelegramServerError as exc:
            self._unreachable("server", exc)
            raise
        except TelegramUnauthorizedError as exc:
            self._unreachable("unauthorized", exc)
            raise
        except TelegramAPIError:
            seen.ok()  # Telegram answered (a 400, 403…): reachable
            raise
        seen.ok()
        return response

    def _unreachable(self, kind: str, exc: Exception) -> None:
        self.metrics.telegram_errors.labels(kind=kind).inc()
        self.metrics.telegram.failed(f"{kind}: {exc}"[:200])
