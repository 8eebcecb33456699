"""Small helpers shared by the handlers."""

from __future__ import annotations

from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message

from services.message_text import split_html


async def answer_long(
    message: Message, text: str, markup: InlineKeyboardMarkup | None = None
) -> None:
    """Answer with ``text`` in as many messages as Telegram's 4,096-character limit needs
    (admin output grows with the data: timelines, mismatch lists, broadcast previews);
    the buttons go under the last part."""
    parts = split_html(text)
    for index, part in enumerate(parts):
        await message.answer(part, reply_markup=markup if index == len(parts) - 1 else None)


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


async def reply(
    event: Message | CallbackQuery, text: str, markup: InlineKeyboardMarkup | None = None
) -> None:
    """The one answer of a screen reachable both by a command and by a menu button: a
    command gets a new message, a press replaces the pressed one (see ``show``)."""
    if isinstance(event, CallbackQuery):
        await show(event, text, markup)
    else:
        await event.answer(text, reply_markup=markup)
