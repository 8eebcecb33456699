"""The ceiling of the update and memory benchmarks: a bare aiogram bot, one message
handler (``answer``) and one callback handler (``answer`` + ``edit_text``).

Imports aiogram and nothing of ours, so a process running only this is the bare
aiogram baseline for memory too (bench/memory.py). ``held=True`` makes its sends wait
for a place in Telegram's overall 30 messages/s (bench/send_limit.py), as ours do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiogram import Bot, Dispatcher, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message


def echo_router() -> Router:
    router = Router()
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="echo", callback_data="echo")]]
    )

    @router.message()
    async def on_message(message: Message) -> None:
        await message.answer(message.text or "?", reply_markup=keyboard)

    @router.callback_query()
    async def on_callback(callback: CallbackQuery) -> None:
        await callback.answer()
        if isinstance(callback.message, Message):
            await callback.message.edit_text(f"pressed {callback.id}", reply_markup=keyboard)

    return router


@contextlib.asynccontextmanager
async def bare_bot(telegram_url: str, token: str, *, held: bool = False) -> AsyncIterator[None]:
    bot = Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base(telegram_url)))
    if held:
        # Imported only here: the memory baseline stays aiogram alone.
        from bench.send_limit import HeldToTelegramLimit

        bot.session.middleware(HeldToTelegramLimit())
    dp = Dispatcher()
    dp.include_router(echo_router())
    polling = asyncio.create_task(
        dp.start_polling(bot, handle_signals=False, close_bot_session=False, polling_timeout=20)
    )
    try:
        yield
    finally:
        with contextlib.suppress(RuntimeError):
            await dp.stop_polling()
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
        await bot.session.close()
