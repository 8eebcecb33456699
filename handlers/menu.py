"""Greeting, main menu and help."""

from __future__ import annotations

from aiogram import F
from aiogram.filters import Command, CommandStart
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message

from bot import keyboards
from core.callbacks import MenuCb
from handlers.spec import RouterSpec
from handlers.util import reply, show
from locales import Translator
from services.chat import ChatService
from services.users import UserView

router = RouterSpec(__name__)


@router.message(CommandStart())
async def start(
    message: Message, t: Translator, user: UserView, chat: ChatService, state: FSMContext
) -> None:
    await state.clear()
    name = message.from_user.first_name if message.from_user else ""
    menu = keyboards.main_menu(t, chat=await chat.available(user.id))
    await message.answer(t("start.greeting", name=name), reply_markup=menu)


@router.callback_query(MenuCb.filter(F.action == "home"))
async def home(
    callback: CallbackQuery, t: Translator, user: UserView, chat: ChatService, state: FSMContext
) -> None:
    await state.clear()
    await show(
        callback, t("start.menu"), keyboards.main_menu(t, chat=await chat.available(user.id))
    )


@router.message(Command("help"))
@router.callback_query(MenuCb.filter(F.action == "help"))
async def help_screen(event: Message | CallbackQuery, t: Translator) -> None:
    await reply(event, t("help.text"), keyboards.back_to_menu(t))
