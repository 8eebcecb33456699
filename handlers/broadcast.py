"""/broadcast <text> (admins, in private or in the admin group): preview, then confirm.

Anyone else's /broadcast falls through to the fallback ("didn't understand") in private
and to silence in groups, so the command's existence leaks nothing.
"""

from __future__ import annotations

from aiogram import F
from aiogram.filters import Command, CommandObject
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from bot.filters import IsAdmin
from bot.settings import Settings
from handlers.spec import RouterSpec
from handlers.util import show
from locales import Markup, Translator, escape
from services.broadcast import BroadcastService


class BroadcastCb(CallbackData, prefix="bc"):
    action: str  # send | cancel
    broadcast_id: int


async def _admin_place(event: Message | CallbackQuery, settings: Settings) -> bool:
    """A private chat with the bot, or the operator's admin group."""
    message = event.message if isinstance(event, CallbackQuery) else event
    if message is None:
        return False
    chat = message.chat
    return chat.type == "private" or chat.id == settings.admin_chat_id


router = RouterSpec(__name__, private_only=False)


@router.message(Command("broadcast"), IsAdmin(), _admin_place)
async def broadcast_command(
    message: Message, command: CommandObject, t: Translator, broadcasts: BroadcastService
) -> None:
    text = (command.args or "").strip()
    if not text or message.from_user is None:
        await message.answer(t("broadcast.usage"))
        return
    # The broadcast is stored as the HTML it is sent as: the admin's text, escaped so
    # that it goes out exactly as typed.
    draft = await broadcasts.draft(message.from_user.id, escape(text))
    if draft.recipients == 0:
        await broadcasts.cancel(draft.id)
        await message.answer(t("broadcast.nobody"))
        return
    markup = InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(
                    text=t("broadcast.send_button", count=draft.recipients),
                    callback_data=BroadcastCb(action="send", broadcast_id=draft.id).pack(),
                ),
                InlineKeyboardButton(
                    text=t("broadcast.cancel_button"),
                    callback_data=BroadcastCb(action="cancel", broadcast_id=draft.id).pack(),
                ),
            ]
        ]
    )
    await message.answer(
        t("broadcast.preview", text=Markup(draft.text), count=draft.recipients), reply_markup=markup
    )


@router.callback_query(BroadcastCb.filter(F.action == "send"), IsAdmin(), _admin_place)
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
    await show(callback, t("broadcast.queued", id=callback_data.broadcast_id, total=total))


@router.callback_query(BroadcastCb.filter(F.action == "cancel"), IsAdmin(), _admin_place)
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
