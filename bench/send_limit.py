"""The bare echo bot held to Telegram's overall limit: the fair ceiling of benchmark 1.

Our bot's handler sends wait for a place in the bot's overall 30 messages/s, as every
send to real Telegram must; the bare echo bot sends without any limit, and the emulator's
flood control is off in this benchmark, so its updates/s is a rate real Telegram would
refuse. This request middleware holds the echo bot to the same rule, counted the same
way as processing/outbox/direct.py and processing/outbox/limits.py count it:

- the same methods (every one that posts a message into a chat; edits and callback
  answers do not count), sent to a numeric chat id;
- a send occupies its place from its start until one second after its answer (Telegram
  counts it somewhere in between), at most 30 places at once.

Written here, not imported from the product, so the ceiling does not depend on our code
(tests/test_bench_send_limit.py checks both count the same methods). Minimal on purpose:
no per-chat or group pacing, no spacing between starts, no shared budget.
"""

from __future__ import annotations

import asyncio
import collections
import time

from aiogram import Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.methods import Response, TelegramMethod
from aiogram.methods.base import TelegramType

PER_SECOND = 30  # Telegram's overall limit per bot (the Bots FAQ)
WINDOW = 1.0

# The methods processing/outbox/direct.py's SEND_METHODS counts (a copy: see above).
COUNTED = frozenset(
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


class OverallSecond:
    """At most ``limit`` sends per ``window``, a send counting from its start until
    ``window`` after its answer."""

    def __init__(self, limit: int = PER_SECOND, window: float = WINDOW) -> None:
        self.limit = limit
        self.window = window
        self.in_flight = 0
        self.answered: collections.deque[float] = collections.deque()  # monotonic times
        self._turn = asyncio.Lock()  # first come, first served

    async def take(self) -> None:
        async with self._turn:
            while True:
                now = time.monotonic()
                while self.answered and self.answered[0] <= now - self.window:
                    self.answered.popleft()
                if self.in_flight + len(self.answered) < self.limit:
                    self.in_flight += 1
                    return
                # Full: the oldest answered send frees its place first; if every place
                # is still in flight, look again shortly.
                wait = self.answered[0] + self.window - now if self.answered else 0.01
                await asyncio.sleep(max(wait, 0.001))

    def settle(self) -> None:
        self.in_flight -= 1
        self.answered.append(time.monotonic())


class HeldToTelegramLimit(BaseRequestMiddleware):
    """Makes each counted send wait for a place in the overall second."""

    def __init__(self, second: OverallSecond | None = None) -> None:
        self.second = second or OverallSecond()
        self.sends = 0  # counted sends, for the benchmark's own check

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        if method.__api_method__ not in COUNTED or not isinstance(
            getattr(method, "chat_id", None), int
        ):
            return await make_request(bot, method)
        await self.second.take()
        self.sends += 1
        try:
            return await make_request(bot, method)
        finally:
            self.second.settle()
