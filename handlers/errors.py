"""One place that turns domain errors into a localised answer to the buyer."""

from __future__ import annotations

import logging

from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import ExceptionTypeFilter
from aiogram.types import ErrorEvent, Message

from handlers.spec import RouterSpec
from locales import Translator, translator
from services.errors import DomainError, ExternalError

router = RouterSpec(__name__, private_only=False)
log = logging.getLogger(__name__)


async def _reply(event: ErrorEvent, text: str) -> None:
    update = event.update
    if update.callback_query is not None:
        query = update.callback_query
        try:
            await query.answer(text, show_alert=True)
        except TelegramBadRequest:
            # Already answered (e.g. "Creating your invoice…"): say it in the chat.
            if isinstance(query.message, Message):
                await query.message.answer(text)
    elif update.message is not None:
        await update.message.answer(text)


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
    await _reply(event, tr(exc.key, **exc.params) if tr.has(exc.key) else tr("error.generic"))


@router.error(ExceptionTypeFilter(ExternalError))
async def external_error(event: ErrorEvent, t: Translator | None = None) -> None:
    log.warning("external_error_in_handler error=%s", event.exception)
    await _reply(event, _t(event, t)("error.external"))
