"""Small helpers shared by the handlers."""

from __future__ import annotations

from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message


async def show(
    callback: CallbackQuery, text: str, markup: InlineKeyboardMarkup | None = None
) -> None:
    """Replace the pressed message's text, or send a new one if it cannot be edited."""
    message = callback.message
    if isinstance(message, Message) and message.text is not None:
        await message.edit_text(text, reply_markup=markup)
    elif isinstance(message, Message):
        await message.answer(text, reply_markup=markup)
    await callback.answer()
