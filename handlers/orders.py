"""/orders: the buyer's recent orders with their status."""

from __future__ import annotations

from aiogram import F
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from bot import keyboards, screens
from core.callbacks import MenuCb
from handlers.spec import RouterSpec
from handlers.util import show
from locales import Translator
from services.orders import OrderService, UserView

router = RouterSpec(__name__)


@router.message(Command("orders"))
async def orders_command(
    message: Message, t: Translator, user: UserView, orders: OrderService
) -> None:
    items = await orders.recent_orders(user.id)
    await message.answer(screens.orders(t, items), reply_markup=keyboards.back_to_menu(t))


@router.callback_query(MenuCb.filter(F.action == "orders"))
async def orders_button(
    callback: CallbackQuery, t: Translator, user: UserView, orders: OrderService
) -> None:
    items = await orders.recent_orders(user.id)
    await show(callback, screens.orders(t, items), keyboards.back_to_menu(t))
