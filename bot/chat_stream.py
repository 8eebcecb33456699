"""A chat answer as it grows, shown the way Telegram's AI bots show it.

First choice: ``sendMessageDraft`` (Bot API 9.x), a temporary preview the client
animates, with a stop button (``can_stop``); the final text is then sent with
``sendMessage`` (a draft is only a preview and disappears). Where drafts are refused
(a group, an old client, the emulator's switch) the answer goes into an ordinary message
edited at most once a second: Telegram's per-chat limit, and what keeps the outbox's
budget for this chat intact.

Long answers are split into parts that fit a message; the preview shows the part being
written. Frames that come faster than the interval are folded into one trailing frame,
never queued, so a fast model costs no extra calls.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramRetryAfter
from aiogram.types import InlineKeyboardMarkup

from services.chat_markdown import markdown_to_html
from services.message_text import split_html

log = logging.getLogger(__name__)

# Room under Telegram's 4,096 characters for the cursor and the cost footer.
PART_LIMIT = 3900
CURSOR = " ▌"
DRAFT_INTERVAL = 0.25  # drafts are cheap, animated previews
EDIT_INTERVAL = 1.0  # ≤ 1 edit per second per chat


class AnswerStream:
    def __init__(self, bot: Bot, chat_id: int, draft_id: int, *, drafts: bool = True) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self.draft_id = draft_id
        self.drafts = drafts
        self._last_frame = 0.0
        self._message_ids: list[int] = []  # edit mode: the messages showing the parts
        self._shown: list[str] = []
        self._latest = ""
        self._trailing: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def update(self, markdown: str) -> None:
        """The answer so far. Shown now, or, if the last frame was too recent, by one
        trailing frame once the interval has passed (a model that pauses mid-answer
        still has its latest words on screen)."""
        self._latest = markdown
        wait = self._interval - (time.monotonic() - self._last_frame)
        if wait > 0:
            if self._trailing is None or self._trailing.done():
                self._trailing = asyncio.create_task(self._trailing_frame(wait))
            return
        async with self._lock:
            await self._frame(markdown)

    @property
    def _interval(self) -> float:
        return DRAFT_INTERVAL if self.drafts else EDIT_INTERVAL

    async def _trailing_frame(self, wait: float) -> None:
        await asyncio.sleep(wait)
        async with self._lock:
            if self._closed:
                return
            try:
                await self._frame(self._latest)
            except TelegramAPIError as exc:  # a preview frame: the final text follows
                log.info("chat_preview_failed chat_id=%s error=%r", self.chat_id, exc)

    async def _frame(self, markdown: str) -> None:
        self._last_frame = time.monotonic()
        parts = split_html(markdown_to_html(markdown), PART_LIMIT)
        if self.drafts:
            try:
                await self.bot.send_message_draft(
                    chat_id=self.chat_id,
                    draft_id=self.draft_id,
                    text=parts[-1],
                    parse_mode="HTML",
                    can_stop=True,
                )
                return
            except TelegramRetryAfter:
                return  # skip this frame; the next one or the final text follows
            except TelegramBadRequest as exc:
                # No drafts in this chat or client: edit an ordinary message instead.
                log.info("chat_drafts_unavailable chat_id=%s error=%s", self.chat_id, exc.message)
                self.drafts = False
        await self._show(parts, final=False)

    async def finish(
        self, html: str, footer: str, markup: InlineKeyboardMarkup | None = None
    ) -> None:
        """The final answer (already HTML) with its footer under the last part."""
        self._closed = True
        if self._trailing is not None:
            self._trailing.cancel()
        async with self._lock:
            await self._final(html, footer, markup)

    async def _final(self, html: str, footer: str, markup: InlineKeyboardMarkup | None) -> None:
        parts = split_html(html, PART_LIMIT) if html else []
        parts = [*parts[:-1], f"{parts[-1]}\n\n{footer}"] if parts else [footer]
        if self.drafts:
            for index, part in enumerate(parts):
                last = index == len(parts) - 1
                await self.bot.send_message(
                    self.chat_id, part, reply_markup=markup if last else None
                )
            return
        await self._show(parts, final=True, markup=markup)

    async def _show(
        self, parts: list[str], *, final: bool, markup: InlineKeyboardMarkup | None = None
    ) -> None:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            text = part if final or not last else part + CURSOR
            keyboard = markup if final and last else None
            if index < len(self._message_ids):
                if self._shown[index] == text and keyboard is None:
                    continue
                try:
                    await self.bot.edit_message_text(
                        text,
                        chat_id=self.chat_id,
                        message_id=self._message_ids[index],
                        reply_markup=keyboard,
                    )
                except TelegramRetryAfter:
                    if not final:
                        return
                    raise
                except TelegramBadRequest as exc:
                    if "not modified" not in exc.message:
                        raise
                self._shown[index] = text
            else:
                sent = await self.bot.send_message(self.chat_id, text, reply_markup=keyboard)
                self._message_ids.append(sent.message_id)
                self._shown.append(text)
