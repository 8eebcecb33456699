"""/quota: limit, used, remaining ($ and ≈ tokens) with a bar, from OpenRouter."""

from __future__ import annotations

from aiogram import F
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from bot import keyboards, screens
from core.callbacks import MenuCb
from handlers.spec import RouterSpec
from handlers.util import reply
from locales import Translator
from services.quota import QuotaService
from services.users import UserView

router = RouterSpec(__name__)


async def _text(t: Translator, user: UserView, quota: QuotaService) -> str:
    view = await quota.quota(user.id, user.model)
    return t("quota.no_key") if view is None else screens.quota(t, view)


@router.message(Command("quota"))
@router.callback_query(MenuCb.filter(F.action == "quota"))
async def quota_screen(
    event: Message | CallbackQuery, t: Translator, user: UserView, quota: QuotaService
) -> None:
    await reply(event, await _text(t, user, quota), keyboards.back_to_menu(t))
