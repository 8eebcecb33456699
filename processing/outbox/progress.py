"""The broadcast's progress message, kept up to date from its outbox rows."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramMigrateToChat

from core.clock import utcnow
from locales import translator
from services.broadcast import BroadcastService, Progress

log = logging.getLogger(__name__)

# The confirm handler edits the progress message to "queued" itself; a tiny broadcast
# may be sent before that edit lands, so "Done" waits this long after queueing.
SETTLE = timedelta(seconds=2)


class BroadcastProgress:
    """Edits each running broadcast's progress message from its outbox rows.

    Everything is recomputed from the database, so a restarted process carries on where
    the old one stopped. Edits are rare (every ``interval`` seconds, only on change) and
    are not outbox messages: a lost edit is repaired by the next one.
    """

    def __init__(self, service: BroadcastService, bot: Bot, interval: float = 3.0) -> None:
        self.service = service
        self.bot = bot
        self.interval = interval
        self._shown: dict[int, str] = {}

    async def run_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("broadcast_progress_failed")
            await asyncio.sleep(self.interval)

    async def tick(self) -> None:
        for progress in await self.service.active():
            t = translator(progress.language)
            if progress.queued_at is not None and utcnow() - progress.queued_at < SETTLE:
                continue
            if progress.finished:
                text = t(
                    "broadcast.done",
                    id=progress.id,
                    sent=progress.sent,
                    unreachable=progress.unreachable,
                )
                # Edit first, then mark done: a crash in between repeats the edit only.
                if await self._edit(progress, text) and await self.service.finish(progress.id):
                    log.info(
                        "broadcast_done id=%s sent=%s unreachable=%s",
                        progress.id,
                        progress.sent,
                        progress.unreachable,
                    )
                    self._shown.pop(progress.id, None)
                continue
            text = t("broadcast.progress", id=progress.id, sent=progress.sent, total=progress.total)
            if self._shown.get(progress.id) != text:
                await self._edit(progress, text)

    async def _edit(self, progress: Progress, text: str) -> bool:
        """True when the message shows ``text`` now (or there is nothing to edit)."""
        if progress.chat_id is None or progress.message_id is None:
            return True
        try:
            await self.bot.edit_message_text(
                text=text, chat_id=progress.chat_id, message_id=progress.message_id
            )
        except (TelegramBadRequest, TelegramMigrateToChat) as exc:
            # "message is not modified" (shown already), deleted by the admin, or its group
            # was upgraded (old messages stay behind): nothing more to do with it.
            log.info("broadcast_progress_edit id=%s error=%s", progress.id, exc)
        except TelegramAPIError as exc:  # 429, network: the next tick tries again
            log.warning("broadcast_progress_edit_failed id=%s error=%s", progress.id, exc)
            return False
        self._shown[progress.id] = text
        return True
