"""⚙️ Settings: which scheduled messages the buyer wants (low-quota alerts, payment
reminders, daily usage summary). Each toggle shows ✅/❌; pressing it flips it."""

from __future__ import annotations

from aiogram import F
from aiogram.filters import Command
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message
from aiogram.utils.keyboard import InlineKeyboardBuilder

from core.callbacks import MenuCb
from handlers.spec import RouterSpec
from handlers.util import show
from locales import Translator
from services.orders import UserView
from services.preferences import Preference, Preferences, PreferencesService

router = RouterSpec(__name__)


class SettingsCb(CallbackData, prefix="st"):
    toggle: str  # a Preference value, validated by the filter below


def _keyboard(t: Translator, prefs: Preferences) -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    for preference in Preference:
        mark = t.plain("settings.on" if prefs.enabled(preference) else "settings.off")
        kb.button(
            text=t.plain(f"settings.{preference.value}", mark=mark),
            callback_data=SettingsCb(toggle=preference.value),
        )
    kb.button(text=t("common.menu"), callback_data=MenuCb(action="home"))
    kb.adjust(1)
    return kb.as_markup()


@router.message(Command("settings"))
async def settings_command(
    message: Message, t: Translator, user: UserView, preferences: PreferencesService
) -> None:
    prefs = await preferences.get(user.id)
    await message.answer(t("settings.title"), reply_markup=_keyboard(t, prefs))


@router.callback_query(MenuCb.filter(F.action == "settings"))
async def settings_button(
    callback: CallbackQuery, t: Translator, user: UserView, preferences: PreferencesService
) -> None:
    prefs = await preferences.get(user.id)
    await show(callback, t("settings.title"), _keyboard(t, prefs))


@router.callback_query(SettingsCb.filter(F.toggle.in_([p.value for p in Preference])))
async def settings_toggle(
    callback: CallbackQuery,
    callback_data: SettingsCb,
    t: Translator,
    user: UserView,
    preferences: PreferencesService,
) -> None:
    # The flag is the presser's own (user.id), whatever message the button sits on.
    prefs = await preferences.toggle(user.id, Preference(callback_data.toggle))
    await show(callback, t("settings.title"), _keyboard(t, prefs))
