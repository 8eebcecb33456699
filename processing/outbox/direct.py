"""Sends that do not go through the outbox (a handler answering a buyer) still count.

Telegram's 30 messages/s is per bot, whoever sends: the outbox keeps that limit exactly,
with no margin, so a handler's ``sendMessage`` must take a free place in the same second
(and, with replicas, in the shared budget) before it goes: sent into a second a
broadcast already filled it would be the 31st, refused with a 429 and lost. It takes
the next free place, ahead of the outbox's queued rows (a buyer's answer does not queue
behind a broadcast), and is not held to the chat's or group's pace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from aiogram import Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.methods import Response, TelegramMethod
from aiogram.methods.base import TelegramType

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

    def __init__(
        self,
        slot: Callable[[int], Awaitable[str]],
        done: Callable[[int, str], Awaitable[None]],
    ) -> None:
        # ``OutboxSender``'s: wait for and take a place (returns the shared booking), and
        # count the send from its answer.
        self.slot = slot
        self.done = done

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
        booking = await self.slot(chat_id)
        try:
            return await make_request(bot, method)
        finally:
            await self.done(chat_id, booking)
