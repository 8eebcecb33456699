"""Buying: packages → (custom amount | model) → currency → quote → confirm → payment screen."""

from __future__ import annotations

import contextlib
import logging

from aiogram import F
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command, CommandObject
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import BufferedInputFile, CallbackQuery, InlineKeyboardMarkup, Message

from bot import keyboards, screens
from bot.settings import Settings
from core.callbacks import AssetCb, MenuCb, ModelCb, OrderCb, PackageCb, QuoteCb
from core.money import format_usd
from handlers.spec import RouterSpec
from handlers.util import reply, show
from locales import Phrase, Translator
from processing.payments import AITokenPaymentProcessor
from services.errors import InvalidAmount, ModelUnavailable
from services.orders import OrderService, OrderView
from services.pricing import parse_token_count
from services.users import UserService, UserView

router = RouterSpec(__name__)
log = logging.getLogger(__name__)


class BuyFlow(StatesGroup):
    entering_amount = State()  # the buyer is typing a custom token count


# ------------------------------------------------------------------ packages
async def _packages_screen(
    t: Translator, user: UserView, orders: OrderService
) -> tuple[str, InlineKeyboardMarkup]:
    model, items = await orders.packages(user)
    bounds = orders.pricing.bounds(model)
    return screens.packages(t, model, bounds), keyboards.packages(t, model, items)


@router.message(Command("buy"))
@router.callback_query(MenuCb.filter(F.action == "tokens"))
async def buy_screen(
    event: Message | CallbackQuery,
    t: Translator,
    user: UserView,
    orders: OrderService,
    state: FSMContext,
    command: CommandObject | None = None,  # only `/buy 5000` carries one
) -> None:
    await state.clear()
    if isinstance(event, Message) and command is not None and command.args:
        try:
            tokens = parse_token_count(command.args)
            await orders.check_amount(user, tokens)
        except InvalidAmount as exc:
            await event.answer(t(exc.key, **exc.params) + "\n\n" + t("buy.buy_usage"))
            return
        await _ask_currency(event, t, tokens, orders)
        return
    text, markup = await _packages_screen(t, user, orders)
    await reply(event, text, markup)


@router.callback_query(PackageCb.filter())
async def package_chosen(
    callback: CallbackQuery,
    callback_data: PackageCb,
    t: Translator,
    user: UserView,
    orders: OrderService,
) -> None:
    # The count comes from a button, but is checked again: prices or rules may have moved.
    await orders.check_amount(user, callback_data.tokens)
    offered = await orders.assets()
    await show(
        callback,
        t("buy.currency", tokens=Phrase("unit.tokens", count=callback_data.tokens)),
        keyboards.assets(t, callback_data.tokens, offered),
    )


# -------------------------------------------------------------------- models
@router.callback_query(MenuCb.filter(F.action == "models"))
async def models_button(
    callback: CallbackQuery, t: Translator, user: UserView, orders: OrderService
) -> None:
    offered = await orders.offered_models()
    current = await orders.current_model(user)
    await show(
        callback,
        t("buy.choose_model"),
        keyboards.models(t, offered, orders.catalog.model_ids, current.id),
    )


@router.callback_query(ModelCb.filter())
async def model_chosen(
    callback: CallbackQuery,
    callback_data: ModelCb,
    t: Translator,
    user: UserView,
    orders: OrderService,
    users: UserService,
) -> None:
    ids = orders.catalog.model_ids
    if not 0 <= callback_data.index < len(ids):
        raise ModelUnavailable()
    await users.set_model(user.id, ids[callback_data.index])
    fresh = UserView(user.id, user.language, ids[callback_data.index])
    text, markup = await _packages_screen(t, fresh, orders)
    await show(callback, text, markup)


# ------------------------------------------------------------- custom amount
@router.callback_query(MenuCb.filter(F.action == "custom"))
async def custom_button(
    callback: CallbackQuery, t: Translator, user: UserView, orders: OrderService, state: FSMContext
) -> None:
    model = await orders.current_model(user)
    await state.set_state(BuyFlow.entering_amount)
    await show(callback, screens.custom_prompt(t, orders.pricing.bounds(model)))


@router.message(BuyFlow.entering_amount, F.text)
async def custom_amount(
    message: Message, t: Translator, user: UserView, orders: OrderService, state: FSMContext
) -> None:
    try:
        tokens = parse_token_count(message.text or "")
        model = await orders.check_amount(user, tokens)
    except InvalidAmount as exc:
        model = await orders.current_model(user)
        await message.answer(
            t(exc.key, **exc.params)
            + "\n\n"
            + screens.custom_prompt(t, orders.pricing.bounds(model))
        )
        return
    await state.clear()
    log.info("custom_amount user=%s tokens=%s model=%s", user.id, tokens, model.id)
    await _ask_currency(message, t, tokens, orders)


@router.message(BuyFlow.entering_amount)
async def custom_amount_not_text(message: Message, t: Translator) -> None:
    await message.answer(t("amount.not_a_number"))


async def _ask_currency(message: Message, t: Translator, tokens: int, orders: OrderService) -> None:
    offered = await orders.assets()
    await message.answer(
        t("buy.currency", tokens=Phrase("unit.tokens", count=tokens)),
        reply_markup=keyboards.assets(t, tokens, offered),
    )


# --------------------------------------------------------------------- quote
@router.callback_query(AssetCb.filter())
async def asset_chosen(
    callback: CallbackQuery,
    callback_data: AssetCb,
    t: Translator,
    user: UserView,
    orders: OrderService,
    settings: Settings,
) -> None:
    quote = await orders.create_quote(user, callback_data.tokens, callback_data.asset)
    await show(
        callback,
        screens.quote(t, quote, f"{settings.markup_percent.normalize():f}"),
        keyboards.quote(t, quote.id),
    )


@router.callback_query(QuoteCb.filter(F.action == "no"))
async def quote_cancelled(
    callback: CallbackQuery,
    callback_data: QuoteCb,
    t: Translator,
    user: UserView,
    orders: OrderService,
) -> None:
    await orders.cancel_quote(user.id, callback_data.quote_id)
    await show(callback, t("quote.cancelled"), keyboards.main_menu(t))


@router.callback_query(QuoteCb.filter(F.action == "ok"))
async def quote_confirmed(
    callback: CallbackQuery,
    callback_data: QuoteCb,
    t: Translator,
    user: UserView,
    orders: OrderService,
) -> None:
    async def answer_tap() -> None:
        # Once the quote is claimed, before the provider call: creating the invoice can
        # take a few seconds and Telegram shows a spinner until the query is answered.
        await callback.answer(t("pay.creating"))

    order, _failures = await orders.confirm_quote(
        user.id, callback_data.quote_id, claimed=answer_tap
    )
    if order.address is None:
        return  # a concurrent tap is still creating this order's invoice; it shows it
    if isinstance(callback.message, Message):
        with contextlib.suppress(TelegramBadRequest):  # buttons already removed by a retap
            await callback.message.edit_reply_markup(reply_markup=None)
        await _send_payment_screen(callback.message, t, order)


async def _send_payment_screen(message: Message, t: Translator, order: OrderView) -> None:
    if order.pay_url is not None:
        # Paid on the provider's page: a button, no address and no QR code.
        await message.answer(
            screens.payment(t, order),
            reply_markup=keyboards.payment(
                t, order.id, pay_url=order.pay_url, total=format_usd(order.total_usd)
            ),
        )
        return
    # bot.qr imports segno (and the xml package its writers pull in) on the first invoice,
    # not at start-up: about 1.3 MiB an idle bot never uses (issue 14 item 6).
    from bot.qr import invoice_png

    await message.answer_photo(
        BufferedInputFile(invoice_png(screens.qr_payload(order)), filename=f"order-{order.id}.png"),
        caption=screens.payment(t, order),
        reply_markup=keyboards.payment(t, order.id),
    )


# ------------------------------------------------------------------- payment
@router.callback_query(OrderCb.filter(F.action == "check"))
async def check_payment(
    callback: CallbackQuery,
    callback_data: OrderCb,
    t: Translator,
    user: UserView,
    processor: AITokenPaymentProcessor,
) -> None:
    check = await processor.check_order(user.id, callback_data.order_id)
    await callback.answer(screens.payment_check(t, check), show_alert=True)


@router.callback_query(OrderCb.filter(F.action == "cancel"))
async def cancel_order(
    callback: CallbackQuery,
    callback_data: OrderCb,
    t: Translator,
    user: UserView,
    orders: OrderService,
) -> None:
    order = await orders.cancel_order(user.id, callback_data.order_id)
    if isinstance(callback.message, Message):
        await callback.message.edit_caption(
            caption=t("pay.cancelled", order_id=order.id), reply_markup=None
        )
    await callback.answer()
