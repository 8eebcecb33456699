"""One place that turns errors into a localised answer to the buyer: domain errors get
their own message, and anything else Telegram refuses gets a generic one, never silence."""

from __future__ import annotations

import logging

from aiogram.exceptions import TelegramAPIError
from aiogram.filters import ExceptionTypeFilter
from aiogram.types import ErrorEvent, Message

from handlers.spec import RouterSpec
from locales import Translator, translator
from services.errors import DomainError, ExternalError

router = RouterSpec(__name__, private_only=False)
log = logging.getLogger(__name__)


async def _reply(event: ErrorEvent, t: Translator, key: str, **params: object) -> None:
    update = event.update
    if update.callback_query is not None:
        query = update.callback_query
        # An alert is plain text. False: the query was answered already (e.g. "Creating
        # your invoice…") or is too old (see bot.middlewares.LateCallbackAnswers); then
        # say it in the chat.
        if not await query.answer(t.plain(key, **params), show_alert=True) and isinstance(
            query.message, Message
        ):
            await query.message.answer(t(key, **params))
    elif update.message is not None:
        await update.message.answer(t(key, **params))


def _t(event: ErrorEvent, t: Translator | None) -> Translator:
    if t is not None:
        return t
    user = event.update.message or event.update.callback_query
    code = user.from_user.language_code if user and user.from_user else None
    return translator(code)


@router.error(ExceptionTypeFilter(DomainError))
async def domain_error(event: ErrorEvent, t: Translator | None = None) -> None:
    exc = event.exception
    assert isinstance(exc, DomainError)
    tr = _t(event, t)
    if tr.has(exc.key):
        await _reply(event, tr, exc.key, **exc.params)
    else:
        await _reply(event, tr, "error.generic")


@router.error(ExceptionTypeFilter(ExternalError))
async def external_error(event: ErrorEvent, t: Translator | None = None) -> None:
    log.warning("external_error_in_handler error=%s", event.exception)
    await _reply(event, _t(event, t), "error.external")


@router.error(ExceptionTypeFilter(TelegramAPIError))
async def telegram_error(event: ErrorEvent, t: Translator | None = None) -> None:
    """Last resort: Telegram refused something the handler sent (bad markup, a message
    gone, a limit). The buyer still gets an answer; the update is logged to find why."""
    log.error(
        "telegram_refused_in_handler error=%r update=%s",
        event.exception,
        event.update.model_dump_json(exclude_none=True),
    )
    try:
        await _reply(event, _t(event, t), "error.generic")
    except TelegramAPIError as exc:
        # Blocked by the buyer, or Telegram refuses this chat altogether: nothing more to do.
        log.warning("telegram_error_reply_failed error=%r", exc)
