"""Admin commands: /stats /order /retry /refund /balance /reconcile.

Only ADMIN_IDS, and only in a private chat with the bot or in the admin group. Anyone
else's command falls through: in private to the usual "didn't understand", in a group
to silence (the other routers ignore groups).
"""

from __future__ import annotations

import re

from aiogram import F
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message

from bot import keyboards
from bot.admin_screens import (
    render_balance,
    render_order,
    render_providers,
    render_recheck,
    render_reconciliation,
    render_stats,
)
from bot.filters import ADMIN_ONLY, ForgedData
from bot.settings import Settings
from core.callbacks import AdminFundsCb, AdminOrderCb, AttentionCb, PayerRefundCb
from core.money import format_crypto
from handlers.spec import RouterSpec
from handlers.util import answer_long
from locales import Translator
from processing.admin_ops import AdminOps, PayerRefundOutcome
from processing.outbox import OutboxSender
from services.admin_ledger import ActionOutcome, recent_period
from services.errors import ExternalError

router = RouterSpec(__name__, private_only=False, admin=True)

PERIODS = {"today": 1, "7d": 7, "30d": 30}


# ASCII digits only: "²".isdigit() is True, but it is no order number (int() refuses it).
_ORDER_ARG = re.compile(r"#?([0-9]+)")


def _order_id(command: CommandObject) -> int | None:
    """``123`` or ``#123`` (as alerts write it); None for anything else (usage line).
    Any size: an id beyond the database's range is simply not found."""
    arg = (command.args or "").split(maxsplit=1)
    match = _ORDER_ARG.fullmatch(arg[0]) if arg else None
    return int(match.group(1)) if match else None


@router.message(F.migrate_to_chat_id)
async def group_upgraded(message: Message, outbox: OutboxSender) -> None:
    # Telegram's service message in a group upgraded to a supergroup: follow the move
    # now, before the next alert bounces off the old id.
    if message.migrate_to_chat_id is not None:
        await outbox.follow_migration(message.chat.id, message.migrate_to_chat_id)


@router.message(Command("stats"), *ADMIN_ONLY)
async def stats(
    message: Message, command: CommandObject, t: Translator, admin: AdminOps, settings: Settings
) -> None:
    days = PERIODS.get((command.args or "today").strip().lower())
    if days is None:
        await answer_long(message, t("admin_cmd.stats_usage"))
        return
    figures = await admin.stats(recent_period(days, settings.timezone))
    await answer_long(message, render_stats(t, figures, settings.timezone))


async def _order_screen(
    t: Translator, admin: AdminOps, order_id: int, tz: str
) -> tuple[str, InlineKeyboardMarkup | None]:
    dossier = await admin.order_dossier(order_id)
    if dossier is None:
        return t("admin_cmd.not_found", order_id=order_id), None
    markup = None
    if dossier.order.attention:
        # The flag stays until an admin says the money is dealt with (a refund by hand,
        # a talk with the buyer): /stats and the reports list it until then.
        markup = keyboards.single_button(
            t.plain("admin_cmd.attention_settle"), AttentionCb(order_id=order_id).pack()
        )
    return render_order(t, dossier, tz), markup


@router.message(Command("order"), *ADMIN_ONLY)
async def order(
    message: Message, command: CommandObject, t: Translator, admin: AdminOps, settings: Settings
) -> None:
    order_id = _order_id(command)
    if order_id is None:
        await answer_long(message, t("admin_cmd.order_usage"))
        return
    await answer_long(message, *await _order_screen(t, admin, order_id, settings.timezone))


@router.callback_query(AdminOrderCb.filter(), *ADMIN_ONLY)
async def order_button(
    callback: CallbackQuery,
    callback_data: AdminOrderCb,
    t: Translator,
    admin: AdminOps,
    settings: Settings,
) -> None:
    screen = await _order_screen(t, admin, callback_data.order_id, settings.timezone)
    if isinstance(callback.message, Message):
        # A new message: the alert above it stays as it was.
        await answer_long(callback.message, *screen)
    await callback.answer()


@router.callback_query(AdminOrderCb.filter())
async def order_button_not_admin(callback: CallbackQuery) -> None:
    # Anyone else in the group pressed it: stop their spinner, show nothing.
    await callback.answer()


@router.callback_query(ForgedData(AdminOrderCb))
async def order_button_forged(callback: CallbackQuery, t: Translator) -> None:
    await callback.answer(t("common.stale_button"), show_alert=True)


@router.callback_query(AttentionCb.filter(), *ADMIN_ONLY)
async def settle_attention(
    callback: CallbackQuery, callback_data: AttentionCb, t: Translator, admin: AdminOps
) -> None:
    order_id = callback_data.order_id
    result = await admin.settle_attention(order_id, callback.from_user.id)
    if result.outcome is ActionOutcome.DONE:
        reason = t(f"admin_cmd.attention_{result.status}")
        text = t("admin_cmd.attention_settled", order_id=order_id, reason=reason)
    elif result.outcome is ActionOutcome.NOT_FOUND:
        text = t("admin_cmd.not_found", order_id=order_id)
    else:  # a second press, or another admin was quicker
        text = t("admin_cmd.attention_none", order_id=order_id)
    if isinstance(callback.message, Message):
        await callback.message.answer(text)
    await callback.answer()


@router.callback_query(AttentionCb.filter())
async def settle_attention_not_admin(callback: CallbackQuery, t: Translator) -> None:
    await callback.answer(t("admin_cmd.recheck_admins_only"), show_alert=True)


@router.callback_query(ForgedData(AttentionCb))
async def settle_attention_forged(callback: CallbackQuery, t: Translator) -> None:
    await callback.answer(t("common.stale_button"), show_alert=True)


@router.callback_query(AdminFundsCb.filter(F.action == "recheck"), *ADMIN_ONLY)
async def recheck_funds(callback: CallbackQuery, t: Translator, admin: AdminOps) -> None:
    # Answered first: the re-check lists every key and may deliver several orders,
    # longer than Telegram keeps the button's spinner waiting.
    await callback.answer(t("admin_cmd.recheck_started"))
    try:
        text = render_recheck(t, await admin.recheck_funds())
    except ExternalError as exc:  # OpenRouter down, or the funds lease busy: say so
        text = t("admin_cmd.openrouter_error", error=str(exc))
    if isinstance(callback.message, Message):
        await callback.message.answer(text)


@router.callback_query(AdminFundsCb.filter())
async def recheck_funds_not_admin(callback: CallbackQuery, t: Translator) -> None:
    await callback.answer(t("admin_cmd.recheck_admins_only"), show_alert=True)


@router.message(Command("retry"), *ADMIN_ONLY)
async def retry(message: Message, command: CommandObject, t: Translator, admin: AdminOps) -> None:
    order_id = _order_id(command)
    if order_id is None or message.from_user is None:
        await answer_long(message, t("admin_cmd.retry_usage"))
        return
    result, now = await admin.retry(order_id, message.from_user.id)
    if result.outcome is ActionOutcome.NOT_FOUND:
        await answer_long(message, t("admin_cmd.not_found", order_id=order_id))
    elif result.outcome is ActionOutcome.WRONG_STATE:
        await answer_long(
            message, t("admin_cmd.retry_refused", order_id=order_id, status=result.status)
        )
    else:
        await answer_long(
            message,
            t("admin_cmd.retry_done", order_id=order_id, previous=result.status, status=now),
        )


@router.message(Command("refund"), *ADMIN_ONLY)
async def refund(message: Message, command: CommandObject, t: Translator, admin: AdminOps) -> None:
    parts = (command.args or "").split(maxsplit=1)
    order_id = _order_id(command)
    note = parts[1].strip() if len(parts) > 1 else ""
    if order_id is None or not note or message.from_user is None:
        await answer_long(message, t("admin_cmd.refund_usage"))
        return
    result = await admin.refund(order_id, message.from_user.id, note[:1000])
    if result.outcome is ActionOutcome.NOT_FOUND:
        await answer_long(message, t("admin_cmd.not_found", order_id=order_id))
    elif result.outcome is ActionOutcome.WRONG_STATE:
        await answer_long(
            message, t("admin_cmd.refund_refused", order_id=order_id, status=result.status)
        )
    elif result.outcome is ActionOutcome.BUYER_BUSY:
        await answer_long(message, t("admin_cmd.refund_buyer_busy", order_id=order_id))
    elif result.outcome is ActionOutcome.OPENROUTER_DOWN:
        await answer_long(
            message,
            t(
                "admin_cmd.refund_openrouter_down",
                order_id=order_id,
                error=result.error or "",
            ),
        )
    else:
        done = t(
            "admin_cmd.refund_done", order_id=order_id, previous=result.status, note=note[:1000]
        )
        offer = await admin.payer_refund_offer(order_id)
        if offer is None:
            await answer_long(message, done)
            return
        # Crypto Pay can send the payment back to the buyer's @CryptoBot wallet.
        asset, _ = offer
        await message.answer(
            done,
            reply_markup=keyboards.single_button(
                t.plain("admin_cmd.payer_refund_button", asset=asset),
                PayerRefundCb(order_id=order_id).pack(),
            ),
        )


@router.callback_query(PayerRefundCb.filter(), *ADMIN_ONLY)
async def payer_refund(
    callback: CallbackQuery, callback_data: PayerRefundCb, t: Translator, admin: AdminOps
) -> None:
    # Answered first: the transfer may take a few seconds with its retries.
    await callback.answer()
    result = await admin.refund_to_payer(callback_data.order_id, callback.from_user.id)
    params = {
        "order_id": result.order_id,
        "amount": format_crypto(result.amount, result.asset) if result.asset else "",
        "asset": result.asset,
        "transfer_id": result.transfer_id or "",
        "error": result.error or "",
    }
    key = {
        PayerRefundOutcome.DONE: "admin_cmd.payer_refund_done",
        PayerRefundOutcome.ALREADY: "admin_cmd.payer_refund_already",
        PayerRefundOutcome.FAILED: "admin_cmd.payer_refund_failed",
    }.get(result.outcome, "admin_cmd.payer_refund_not_offered")
    if isinstance(callback.message, Message):
        await callback.message.answer(t(key, **params))


@router.callback_query(PayerRefundCb.filter())
async def payer_refund_not_admin(callback: CallbackQuery) -> None:
    await callback.answer()


@router.callback_query(ForgedData(PayerRefundCb))
async def payer_refund_forged(callback: CallbackQuery, t: Translator) -> None:
    await callback.answer(t("common.stale_button"), show_alert=True)


@router.message(Command("balance"), *ADMIN_ONLY)
async def balance(message: Message, t: Translator, admin: AdminOps) -> None:
    providers = render_providers(t, admin.provider_states())
    try:
        figures = await admin.balance()
    except ExternalError as exc:
        error = t("admin_cmd.openrouter_error", error=str(exc))
        await answer_long(message, f"{error}\n\n{providers}")
        return
    await answer_long(message, f"{render_balance(t, figures)}\n\n{providers}")


@router.message(Command("reconcile"), *ADMIN_ONLY)
async def reconcile(message: Message, t: Translator, admin: AdminOps) -> None:
    try:
        report = await admin.reconcile()
    except ExternalError as exc:
        await answer_long(message, t("admin_cmd.openrouter_error", error=str(exc)))
        return
    await answer_long(message, render_reconciliation(t, report))
