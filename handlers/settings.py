"""⚙️ Settings: which scheduled messages the buyer wants (low-quota alerts, payment
reminders, daily usage summary). Each toggle shows ✅/❌; pressing it flips it."""

from __future__ import annotations

from aiogram import F
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from bot import keyboards
from core.callbacks import MenuCb, SettingsCb
from handlers.spec import RouterSpec
from handlers.util import reply, show
from locales import Translator
from services.preferences import Preference, PreferencesService
from services.users import UserView

router = RouterSpec(__name__)


@router.message(Command("settings"))
@router.callback_query(MenuCb.filter(F.action == "settings"))
async def settings_screen(
    event: Message | CallbackQuery,
    t: Translator,
    user: UserView,
    preferences: PreferencesService,
) -> None:
    prefs = await preferences.get(user.id)
    await reply(event, t("settings.title"), keyboards.settings(t, prefs))


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
    await show(callback, t("settings.title"), keyboards.settings(t, prefs))
