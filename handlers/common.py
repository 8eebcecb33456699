"""/cancel from any step, and the fallback for messages nothing else understood."""

from __future__ import annotations

from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message

from bot import keyboards
from handlers.spec import RouterSpec
from locales import Translator

router = RouterSpec(__name__)


@router.message(Command("cancel"))
async def cancel(message: Message, t: Translator, state: FSMContext) -> None:
    had_step = await state.get_state() is not None
    await state.clear()
    await message.answer(
        t("common.cancelled" if had_step else "common.nothing_to_cancel"),
        reply_markup=keyboards.main_menu(t),
    )


fallback = RouterSpec(f"{__name__}.fallback")


@fallback.message()
async def unknown_message(message: Message, t: Translator) -> None:
    await message.answer(t("common.unknown"), reply_markup=keyboards.main_menu(t))


@fallback.callback_query()
async def unknown_button(callback: CallbackQuery, t: Translator) -> None:
    # Data we don't recognise: a button from an old version or forged data.
    await callback.answer(t("common.stale_button"), show_alert=True)
