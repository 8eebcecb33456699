"""/broadcast <text> (admins, in private or in the admin group): preview, then confirm.

Anyone else's /broadcast falls through to the fallback ("didn't understand") in private
and to silence in groups, so the command's existence leaks nothing.
"""

from __future__ import annotations

from aiogram import F
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, Message

from bot import keyboards
from bot.filters import ADMIN_ONLY, ForgedData
from core.callbacks import BroadcastCb
from core.money import format_count
from handlers.spec import RouterSpec
from handlers.util import answer_long, show
from locales import Markup, Phrase, Translator, escape
from services.broadcast import BroadcastService
from services.message_text import MAX_MESSAGE_LENGTH, telegram_length

router = RouterSpec(__name__, private_only=False, admin=True)


@router.message(Command("broadcast"), *ADMIN_ONLY)
async def broadcast_command(
    message: Message, command: CommandObject, t: Translator, broadcasts: BroadcastService
) -> None:
    text = (command.args or "").strip()
    if not text or message.from_user is None:
        await message.answer(t("broadcast.usage"))
        return
    # The broadcast is stored as the HTML it is sent as: the admin's text, escaped so
    # that it goes out exactly as typed.
    body = escape(text)
    # Each buyer gets it as one message, so it must fit one (a Telegram client caps the
    # command itself at 4,096 too; the preview is split instead, see answer_long).
    if telegram_length(body) > MAX_MESSAGE_LENGTH:
        await message.answer(
            t(
                "broadcast.too_long",
                length=Phrase("unit.characters", count=telegram_length(body)),
                limit=format_count(MAX_MESSAGE_LENGTH),
            )
        )
        return
    draft = await broadcasts.draft(message.from_user.id, body)
    if draft.recipients == 0:
        await broadcasts.cancel(draft.id)
        await message.answer(t("broadcast.nobody"))
        return
    markup = keyboards.broadcast_confirm(t, draft.id, draft.recipients)
    await answer_long(
        message, t("broadcast.preview", text=Markup(draft.text), count=draft.recipients), markup
    )


@router.callback_query(BroadcastCb.filter(F.action == "send"), *ADMIN_ONLY)
async def broadcast_send(
    callback: CallbackQuery,
    callback_data: BroadcastCb,
    t: Translator,
    broadcasts: BroadcastService,
) -> None:
    message = callback.message
    if not isinstance(message, Message):
        await callback.answer(t("common.stale_button"), show_alert=True)
        return
    total = await broadcasts.confirm(
        callback_data.broadcast_id, message.chat.id, message.message_id
    )
    if total is None:  # a double tap, or already cancelled: queued once, nothing more
        await callback.answer(t("broadcast.already"))
        return
    await show(callback, t("broadcast.queued", id=callback_data.broadcast_id, count=total))


@router.callback_query(BroadcastCb.filter(F.action == "cancel"), *ADMIN_ONLY)
async def broadcast_cancel(
    callback: CallbackQuery,
    callback_data: BroadcastCb,
    t: Translator,
    broadcasts: BroadcastService,
) -> None:
    if not await broadcasts.cancel(callback_data.broadcast_id):
        await callback.answer(t("broadcast.already"))
        return
    await show(callback, t("broadcast.cancelled"))


@router.callback_query(ForgedData(BroadcastCb))
async def broadcast_forged(callback: CallbackQuery, t: Translator) -> None:
    await callback.answer(t("common.stale_button"), show_alert=True)
