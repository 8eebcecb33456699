"""The emulator's records: chats, users, messages, call events, callback queries, webhook."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# Exactly one of these makes an inline button do something; a bare text button is invalid.
INLINE_BUTTON_ACTIONS = (
    "callback_data",
    "url",
    "web_app",
    "login_url",
    "switch_inline_query",
    "switch_inline_query_current_chat",
    "switch_inline_query_chosen_chat",
    "copy_text",
    "callback_game",
    "pay",
)


@dataclass
class Chat:
    id: int
    type: str  # private | group | supergroup | channel
    title: str | None = None
    first_name: str | None = None
    username: str | None = None
    is_forum: bool = False
    next_message_id: int = 1
    migrated_to: int | None = None  # a basic group upgraded to this supergroup
    # A forum supergroup's open topics: message_thread_id -> name. The General topic
    # (id 1) is not one of them: Telegram refuses message_thread_id=1 in sendMessage.
    topics: dict[int, str] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.type == "private":
            body["first_name"] = self.first_name or "User"
        else:
            body["title"] = self.title or f"Chat {self.id}"
        if self.username:
            body["username"] = self.username
        if self.is_forum:
            body["is_forum"] = True
        return body


@dataclass
class User:
    id: int
    first_name: str = "Buyer"
    username: str | None = None
    language_code: str | None = "en"
    block_reason: str | None = None  # None | "blocked" | "deactivated"

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "is_bot": False, "first_name": self.first_name}
        if self.username:
            body["username"] = self.username
        if self.language_code:
            body["language_code"] = self.language_code
        return body


def inline_buttons(markup: dict[str, Any] | None) -> list[list[dict[str, Any]]]:
    if not markup or not isinstance(markup.get("inline_keyboard"), list):
        return []
    rows = []
    for row in markup["inline_keyboard"]:
        buttons = []
        for button in row:
            item = {"text": button.get("text", "")}
            for key in ("callback_data", "url"):
                if key in button:
                    item[key] = button[key]
            buttons.append(item)
        rows.append(buttons)
    return rows


@dataclass
class StoredMessage:
    chat_id: int
    message_id: int
    from_bot: bool
    sender: dict[str, Any]
    date: int
    sender_chat: dict[str, Any] | None = None  # a message sent on behalf of a chat
    seq: int = 0
    text: str | None = None  # as sent, markup included
    caption: str | None = None  # as sent, markup included
    parse_mode: str | None = None
    plain: str = ""  # what the user sees: text or caption, markup removed
    entities: list[dict[str, Any]] = field(default_factory=list)
    photo: list[dict[str, Any]] | None = None
    document: dict[str, Any] | None = None
    reply_markup: dict[str, Any] | None = None
    reply_to: int | None = None
    message_thread_id: int | None = None  # the forum topic it was sent to
    edited: int = 0
    edit_date: int | None = None
    deleted: bool = False
    history: list[str] = field(default_factory=list)  # earlier `plain` versions
    service: dict[str, Any] | None = None  # a service message's fields, e.g. migrate_to_chat_id

    @property
    def has_media(self) -> bool:
        return self.photo is not None or self.document is not None

    def to_api(self, chat: Chat, reply_to: StoredMessage | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "message_id": self.message_id,
            "from": self.sender,
            "chat": chat.to_api(),
            "date": self.date,
        }
        if self.sender_chat is not None:
            body["sender_chat"] = self.sender_chat
        if self.edit_date is not None:
            body["edit_date"] = self.edit_date
        if self.message_thread_id is not None:
            body["message_thread_id"] = self.message_thread_id
            body["is_topic_message"] = True
        if reply_to is not None:
            body["reply_to_message"] = reply_to.to_api(chat)
        if self.service is not None:
            return body | self.service
        if self.has_media:
            if self.photo is not None:
                body["photo"] = self.photo
            if self.document is not None:
                body["document"] = self.document
            if self.caption is not None:
                body["caption"] = self.plain
                if self.entities:
                    body["caption_entities"] = self.entities
        else:
            body["text"] = self.plain
            if self.entities:
                body["entities"] = self.entities
        # Only inline keyboards are echoed back in a Message.
        if self.reply_markup and "inline_keyboard" in self.reply_markup:
            body["reply_markup"] = self.reply_markup
        return body

    def record(self) -> dict[str, Any]:
        """The control API's view of the message."""
        return {
            "message_id": self.message_id,
            "chat_id": self.chat_id,
            "from_bot": self.from_bot,
            "user_id": self.sender.get("id"),
            "text": self.text,
            "caption": self.caption,
            "plain": self.plain,
            "parse_mode": self.parse_mode,
            "entities": self.entities,
            "photo": self.photo is not None,
            "photo_file_id": self.photo[-1]["file_id"] if self.photo else None,
            "document": self.document is not None,
            "document_file_id": self.document["file_id"] if self.document else None,
            "document_name": self.document.get("file_name") if self.document else None,
            "buttons": inline_buttons(self.reply_markup),
            "reply_markup": self.reply_markup,
            "reply_to_message_id": self.reply_to,
            "message_thread_id": self.message_thread_id,
            "edited": self.edited,
            "deleted": self.deleted,
            "date": self.date,
            "seq": self.seq,
            "history": self.history,
            "service": self.service,
        }


@dataclass
class Event:
    """One Bot API call, successful, failed or faulted."""

    seq: int
    at: float
    method: str
    chat_id: int | str | None
    message_id: int | None
    ok: bool
    error_code: int | None = None
    description: str | None = None
    fault: bool = False

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "seq": self.seq,
            "at": self.at,
            "method": self.method,
            "chat_id": self.chat_id,
            "message_id": self.message_id,
            "ok": self.ok,
        }
        if not self.ok:
            body["error_code"] = self.error_code
            body["description"] = self.description
        if self.fault:
            body["fault"] = True
        return body


@dataclass
class CallbackQuery:
    id: str
    user_id: int
    chat_id: int
    message_id: int
    data: str
    answered: bool = False
    text: str | None = None
    show_alert: bool = False
    url: str | None = None
    answered_at: float | None = None
    created: float = field(default_factory=time.monotonic)

    def to_json(self) -> dict[str, Any]:
        return {
            "callback_query_id": self.id,
            "user_id": self.user_id,
            "chat_id": self.chat_id,
            "message_id": self.message_id,
            "data": self.data,
            "answered": self.answered,
            "text": self.text,
            "show_alert": self.show_alert,
            "url": self.url,
            "answered_at": self.answered_at,
        }


@dataclass
class Webhook:
    url: str
    secret_token: str | None = None
    max_connections: int = 40
    last_error_date: int | None = None
    last_error_message: str | None = None


@dataclass
class CallContext:
    """What a Bot API handler tells the event log about the call."""

    chat_id: int | str | None = None
    message_id: int | None = None
    touched: list[StoredMessage] = field(default_factory=list)


ApiHandler = Callable[[dict[str, Any], CallContext], Awaitable[Any]]
