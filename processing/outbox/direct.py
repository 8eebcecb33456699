"""Sends that do not go through the outbox (a handler answering a buyer) still count.

Telegram's 30 messages/s is per bot, whoever sends: the outbox keeps that limit exactly,
with no margin, so every direct ``sendMessage`` a handler makes is charged to the same
limiter as it goes (never delayed: a buyer's answer does not queue behind a broadcast),
and the outbox leaves that slot free for the next second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

from aiogram import Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.methods import Response, TelegramMethod
from aiogram.methods.base import TelegramType

if TYPE_CHECKING:
    from processing.outbox.limits import RateLimiter

# Set while the outbox itself sends: its own sends are charged by its own loop.
OUTBOX_SENDING: ContextVar[bool] = ContextVar("outbox_sending", default=False)

# Every method that posts a message into a chat (edits and callback answers do not).
SEND_METHODS = frozenset(
    {
        "sendMessage",
        "sendPhoto",
        "sendDocument",
        "sendMediaGroup",
        "sendAnimation",
        "sendAudio",
        "sendVideo",
        "sendVideoNote",
        "sendVoice",
        "sendSticker",
        "sendLocation",
        "sendVenue",
        "sendContact",
        "sendPoll",
        "sendDice",
        "sendInvoice",
        "copyMessage",
        "forwardMessage",
    }
)


class DirectSends(BaseRequestMiddleware):
    """Charges a handler's sends to the outbox's limiter (module docstring)."""

    def __init__(self, limiter: Callable[[], RateLimiter]) -> None:
        self.limiter = limiter  # a getter: ``OutboxSender.configure`` replaces the limiter

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        chat_id = getattr(method, "chat_id", None)
        if (
            OUTBOX_SENDING.get()
            or method.__api_method__ not in SEND_METHODS
            or not isinstance(chat_id, int)
        ):
            return await make_request(bot, method)
        limiter = self.limiter()
        limiter.take(chat_id, time.monotonic())
        try:
            return await make_request(bot, method)
        finally:
            limiter.settle(chat_id, time.monotonic())
