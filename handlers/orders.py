"""/orders: the buyer's recent orders with their status."""

from __future__ import annotations

from aiogram import F
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from bot import keyboards, screens
from core.callbacks import MenuCb
from handlers.spec import RouterSpec
from handlers.util import reply
from locales import Translator
from services.orders import OrderService
from services.users import UserView

router = RouterSpec(__name__)


@router.message(Command("orders"))
@router.callback_query(MenuCb.filter(F.action == "orders"))
async def orders_screen(
    event: Message | CallbackQuery, t: Translator, user: UserView, orders: OrderService
) -> None:
    items = await orders.recent_orders(user.id)
    await reply(event, screens.orders(t, items), keyboards.back_to_menu(t))
