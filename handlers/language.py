"""/lang: every offered language, each by its own name."""

from __future__ import annotations

from aiogram import F
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from bot import keyboards
from core.callbacks import LangCb, MenuCb
from handlers.spec import RouterSpec
from handlers.util import reply, show
from locales import LANGUAGES, Translator, translator
from services.users import UserService, UserView

router = RouterSpec(__name__)


@router.message(Command("lang"))
@router.callback_query(MenuCb.filter(F.action == "lang"))
async def lang_screen(event: Message | CallbackQuery, t: Translator) -> None:
    await reply(event, t("lang.choose"), keyboards.languages(t))


@router.callback_query(LangCb.filter(F.code.in_(LANGUAGES)))
async def lang_chosen(
    callback: CallbackQuery, callback_data: LangCb, user: UserView, users: UserService
) -> None:
    await users.set_language(user.id, callback_data.code)
    t = translator(callback_data.code)
    await show(callback, t("lang.changed"), keyboards.main_menu(t))
