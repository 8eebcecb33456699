"""What every part of the emulator shares: the bot's state, the call log, change
notification, and the helpers that turn Bot API parameters into chats, messages and files.

``TelegramEmulator`` (``sandbox.telegram.emulator``) is this plus the Bot API methods
(``botapi``), the update delivery (``delivery``) and the control routes (``control``,
``users``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import ClientSession

from sandbox.common import FaultInjector
from sandbox.telegram.errors import NOT_FOUND, NOT_MODIFIED, BotApiError, bad_request
from sandbox.telegram.files import StoredFile, Upload, image_size, sniff_mime
from sandbox.telegram.limits import MAX_CALLBACK_DATA_BYTES, RATE_LIMITED_METHODS, FloodControl
from sandbox.telegram.model import (
    INLINE_BUTTON_ACTIONS,
    ApiHandler,
    CallbackQuery,
    CallContext,
    Chat,
    Event,
    StoredMessage,
    User,
    Webhook,
)
from sandbox.telegram.params import as_int

# Methods kept out of the event log: polling would flood it.
UNLOGGED_METHODS = frozenset({"getupdates"})


class EmulatorState:
    """The bot's state and the plumbing shared by the Bot API and control routes."""

    # Filled by TelegramEmulator from BotApiMethods: lowercase name -> (name, handler).
    _methods: dict[str, tuple[str, ApiHandler]]

    def __init__(
        self,
        token: str,
        *,
        bot_username: str,
        bot_first_name: str,
        webhook_retry_delays: Sequence[float],
        webhook_timeout: float,
        callback_max_age: float,
    ) -> None:
        bot_id, sep, _ = token.partition(":")
        if not sep or not bot_id.isdigit():
            raise ValueError("a bot token looks like '123456:ABC...'")
        self.token = token
        self.bot_id = int(bot_id)
        self.bot_username = bot_username
        self.bot_first_name = bot_first_name
        self.webhook_retry_delays = tuple(webhook_retry_delays)
        self.webhook_timeout = webhook_timeout
        self.default_callback_max_age = callback_max_age

        # Counters survive /control/reset so that waiting clients never see them go back.
        self._seq = 0
        self._update_ids = itertools.count(1)
        self._callback_ids = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._poll_generation = 0
        self._changed = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task[None] | None = None
        self._http: ClientSession | None = None
        self._reset_state()
        self.faults = FaultInjector()

    def _reset_state(self) -> None:
        self.chats: dict[int, Chat] = {}
        self.users: dict[int, User] = {}
        self.messages: dict[int, dict[int, StoredMessage]] = {}  # chat id -> id -> message
        self.events: list[Event] = []
        self.pending: list[dict[str, Any]] = []  # unconfirmed updates, oldest first
        self.callbacks: dict[str, CallbackQuery] = {}
        self.files: dict[str, StoredFile] = {}
        self.file_paths: dict[str, str] = {}
        self.webhook: Webhook | None = None
        self.allowed_updates: list[str] | None = None
        self.commands: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.menu_buttons: dict[int | None, dict[str, Any]] = {}
        self.bot_texts: dict[tuple[str, str], str] = {}
        self.flood = FloodControl()
        self.callback_max_age = self.default_callback_max_age
        self.drafts_supported = True
        self._reset_drafts()

    # ------------------------------------------------------------ change notification
    def _reset_drafts(self) -> None:
        """Overridden by ``sandbox.telegram.drafts.MessageDrafts``."""

    def _clear_draft(self, chat_id: int) -> None:
        """Overridden by ``sandbox.telegram.drafts.MessageDrafts``."""

    def _notify(self) -> None:
        """Wake every long poll; each re-checks its own condition."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, seconds: float | None) -> None:
        """Sleep until the next _notify() or for ``seconds`` (None: no limit)."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _log(self, event: Event) -> None:
        self.events.append(event)
        self._notify()

    async def call(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Run one Bot API method: ``(HTTP status, response body)``; logs the call."""
        at = time.time()
        known = self._methods.get(method.lower())
        ctx = CallContext()
        limited = method.lower() in RATE_LIMITED_METHODS
        try:
            if known is None:
                raise NOT_FOUND
            if limited:
                self._check_flood(params)
            result = await known[1](params, ctx)
        except BotApiError as exc:
            status, body, ok = exc.error_code, exc.payload(), False
        else:
            status, body, ok = 200, {"ok": True, "result": result}, True
            sent_to = as_int(params.get("chat_id"))
            if limited and sent_to is not None:
                self.flood.record(at, sent_to, self._is_group(sent_to))
        if method.lower() not in UNLOGGED_METHODS:
            chat_id = ctx.chat_id if ctx.chat_id is not None else params.get("chat_id")
            message_id = ctx.message_id
            if message_id is None:
                message_id = as_int(params.get("message_id"))
            event = Event(
                seq=self._next_seq(),
                at=at,
                method=known[0] if known else method,
                chat_id=chat_id,
                message_id=message_id,
                ok=ok,
                error_code=None if ok else status,
                description=None if ok else body["description"],
            )
            for message in ctx.touched:
                message.seq = event.seq
            self._log(event)
        return status, body

    def _is_group(self, chat_id: int) -> bool:
        chat = self.chats.get(chat_id)
        return chat.type in ("group", "supergroup") if chat is not None else chat_id < 0

    def _check_flood(self, params: Mapping[str, Any]) -> None:
        chat_id = as_int(params.get("chat_id"))
        if chat_id is None:
            return  # the method itself answers the bad chat_id
        retry_after = self.flood.admit(chat_id, self._is_group(chat_id), time.monotonic())
        if retry_after is not None:
            raise BotApiError(
                429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after
            )

    # --------------------------------------------------------------------- helpers
    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.bot_first_name,
            "username": self.bot_username,
        }

    def _chat_for(self, params: Mapping[str, Any], *, check_blocked: bool = True) -> Chat:
        raw = params.get("chat_id")
        if raw is None or raw == "":
            raise bad_request("chat_id is empty")
        chat: Chat | None = None
        if isinstance(raw, int):
            chat = self.chats.get(raw)
        elif isinstance(raw, str) and raw.startswith("@"):
            name = raw[1:].lower()
            chat = next(
                (c for c in self.chats.values() if (c.username or "").lower() == name), None
            )
        if chat is None:
            raise bad_request("chat not found")
        if chat.migrated_to is not None:
            raise BotApiError(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                migrate_to_chat_id=chat.migrated_to,
            )
        if check_blocked and chat.type == "private":
            user = self.users.get(chat.id)
            if user is not None and user.block_reason == "deactivated":
                raise BotApiError(403, "Forbidden: user is deactivated")
            if user is not None and user.block_reason:
                raise BotApiError(403, "Forbidden: bot was blocked by the user")
        return chat

    def _new_message(self, chat: Chat, *, from_bot: bool, sender: dict[str, Any]) -> StoredMessage:
        message = StoredMessage(
            chat_id=chat.id,
            message_id=chat.next_message_id,
            from_bot=from_bot,
            sender=sender,
            date=int(time.time()),
        )
        chat.next_message_id += 1
        self.messages.setdefault(chat.id, {})[message.message_id] = message
        return message

    def _message_api(self, message: StoredMessage) -> dict[str, Any]:
        chat = self.chats[message.chat_id]
        reply_to = None
        if message.reply_to is not None:
            reply_to = self.messages.get(chat.id, {}).get(message.reply_to)
        return message.to_api(chat, reply_to)

    def _thread_target(self, chat: Chat, params: Mapping[str, Any]) -> int | None:
        """The forum topic a message goes to. As Telegram: a topic that was deleted or
        never existed, or the General topic (1) is 400 "message thread not found"; so is a
        thread in a chat without topics (comment threads are not modelled); a private
        chat ignores the parameter."""
        thread = as_int(params.get("message_thread_id"))
        if thread is None or chat.type == "private":
            return None
        if chat.is_forum and thread in chat.topics:
            return thread
        raise bad_request("message thread not found")

    def _reply_target(self, chat: Chat, params: Mapping[str, Any]) -> int | None:
        reply = params.get("reply_parameters")
        if isinstance(reply, dict) and reply.get("message_id") is not None:
            target = as_int(reply.get("message_id"))
            allow = bool(reply.get("allow_sending_without_reply"))
        else:
            target = as_int(params.get("reply_to_message_id"))
            allow = bool(params.get("allow_sending_without_reply"))
        if target is None:
            return None
        found = self.messages.get(chat.id, {}).get(target)
        if found is None or found.deleted:
            if allow:
                return None
            raise bad_request("message to be replied not found")
        return target

    @staticmethod
    def _checked_markup(params: Mapping[str, Any]) -> dict[str, Any] | None:
        markup = params.get("reply_markup")
        if markup is None:
            return None
        if not isinstance(markup, dict):
            raise bad_request("can't parse reply keyboard markup JSON object")
        if "inline_keyboard" not in markup:
            return markup  # reply keyboard, remove_keyboard or force_reply
        rows = markup["inline_keyboard"]
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise bad_request(
                'field "inline_keyboard" of the InlineKeyboardMarkup must be an Array'
            )
        for row in rows:
            for button in row:
                if not isinstance(button, dict) or not button.get("text"):
                    raise bad_request("BUTTON_TEXT_INVALID")
                if not any(key in button for key in INLINE_BUTTON_ACTIONS):
                    raise bad_request(
                        "can't parse inline keyboard button: "
                        "Text buttons are unallowed in the inline keyboard"
                    )
                if "callback_data" in button:
                    data = button["callback_data"]
                    size = len(data.encode()) if isinstance(data, str) else 0
                    if not 1 <= size <= MAX_CALLBACK_DATA_BYTES:
                        raise bad_request("BUTTON_DATA_INVALID")
                if "url" in button and not (isinstance(button["url"], str) and button["url"]):
                    raise bad_request("BUTTON_URL_INVALID")
        # Telegram treats an empty inline keyboard as no keyboard at all.
        return markup if any(rows) else None

    def _edit_target(self, params: Mapping[str, Any]) -> tuple[Chat, StoredMessage]:
        if params.get("inline_message_id"):
            raise bad_request("MESSAGE_ID_INVALID")  # inline mode is not emulated
        chat = self._chat_for(params)
        message_id = as_int(params.get("message_id"))
        if message_id is None:
            raise bad_request("message identifier is not specified")
        message = self.messages.get(chat.id, {}).get(message_id)
        if message is None or message.deleted:
            raise bad_request("message to edit not found")
        if not message.from_bot:
            raise bad_request("message can't be edited")
        return chat, message

    def _apply_edit(
        self,
        message: StoredMessage,
        ctx: CallContext,
        *,
        plain: str,
        entities: list[dict[str, Any]],
        markup: dict[str, Any] | None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Apply an edit, or fail like Telegram when nothing visible changes.

        ``fields`` are further StoredMessage attributes (text/caption as sent, parse_mode).
        """
        if (plain, entities, markup) == (message.plain, message.entities, message.reply_markup):
            raise bad_request(NOT_MODIFIED)
        if plain != message.plain:
            message.history.append(message.plain)
        message.plain, message.entities, message.reply_markup = plain, entities, markup
        for name, value in fields.items():
            setattr(message, name, value)
        message.edited += 1
        message.edit_date = int(time.time())
        ctx.touched.append(message)
        ctx.message_id = message.message_id
        return self._message_api(message)

    def _store_file(self, kind: str, upload: Upload | None, url: str | None) -> StoredFile:
        n = next(self._file_ids)
        prefix = "AgAC" if kind == "photo" else "BQAC"
        data = upload.data if upload else None
        digest = hashlib.sha256(data if data is not None else (url or "").encode()).hexdigest()
        name = upload.filename if upload else None
        mime = sniff_mime(data, upload.content_type if upload else None) if data else None
        extension = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif"}.get(
            mime or "", "jpg" if kind == "photo" else "bin"
        )
        stored = StoredFile(
            file_id=f"{prefix}{self.bot_id}x{n:06d}",
            file_unique_id=f"AQAD{digest[:16]}",
            kind=kind,
            data=data,
            file_path=f"{kind}s/file_{n}.{extension}",
            file_name=name if kind == "document" else None,
            mime_type=mime if kind == "document" else None,
            url=url,
        )
        if data and (size := image_size(data)):
            stored.width, stored.height = size
        self.files[stored.file_id] = stored
        self.file_paths[stored.file_path] = stored.file_id
        return stored

    def _resolve_file(self, source: Any, kind: str) -> StoredFile:
        if isinstance(source, Upload):
            if not source.data:
                raise bad_request("file must be non-empty")
            return self._store_file(kind, source, None)
        if isinstance(source, str) and source:
            if source.startswith(("http://", "https://")):
                return self._store_file(kind, None, source)
            known = self.files.get(source)
            if known is None:
                raise bad_request("wrong file identifier/HTTP URL specified")
            if known.kind != kind:
                raise bad_request(f"can't use file of type {known.kind.title()} as {kind.title()}")
            return known
        raise bad_request(f"there is no {kind} in the request")
