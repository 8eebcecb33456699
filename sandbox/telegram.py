"""Telegram Bot API emulator: enough of https://core.telegram.org/bots/api to run the real bot.

The bot talks to it exactly as to Telegram, through
``AiohttpSession(api=TelegramAPIServer.from_base(url))``: ``{url}/bot{token}/{method}``.
Every answer is ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N,
"description": "..."}`` with HTTP status N, using Telegram's own error texts so that
aiogram raises the same exceptions it raises in production (TelegramBadRequest,
TelegramForbiddenError, TelegramRetryAfter, TelegramConflictError, ...).

Bot API methods: getMe, getUpdates, setWebhook, deleteWebhook, getWebhookInfo, sendMessage,
sendPhoto, sendDocument, editMessageText, editMessageCaption, editMessageReplyMarkup,
deleteMessage, deleteMessages, answerCallbackQuery, setMyCommands, getMyCommands,
deleteMyCommands, setChatMenuButton, getChatMenuButton, sendChatAction, getChat, getFile,
set/getMyName, set/getMyDescription, set/getMyShortDescription, close, logOut.
Files uploaded by the bot are downloadable at ``/file/bot{token}/{file_path}``.

Test steering lives under ``/control/`` (JSON, never faulted, never in the event log):

- ``POST /control/chats`` ``{chat_id, type, title?, first_name?, username?, is_forum?}``
- ``POST /control/updates/message`` ``{user_id, text, first_name?, username?,
  language_code?, chat_id?}`` -> ``{update_id, message_id, queued}``
- ``POST /control/updates/callback`` ``{user_id, message_id, data, chat_id?}`` ->
  ``{update_id, callback_query_id, queued}`` (data may be forged)
- ``POST /control/updates/press`` ``{user_id, text, chat_id?, message_id?, match?}`` ->
  ``{update_id, callback_query_id, message_id, data, queued}``; 404 lists the buttons
- ``GET /control/chats/{chat_id}/messages`` -> message records in send order (header
  ``X-Sandbox-Seq`` carries the global seq of the snapshot)
- ``GET /control/chats/{chat_id}/wait?after_seq=N&timeout=S`` -> ``{seq, events}``
- ``GET /control/events?after_seq=N&chat_id=C`` -> list of Bot API call events
- ``GET /control/callback_answers`` -> answered callback queries;
  ``GET /control/callback_answers/{id}?timeout=S`` long-polls one query until answered
- ``GET /control/files/{file_id}`` -> the uploaded bytes
- ``POST /control/users/{user_id}/block`` ``{blocked?: true, reason?: "blocked"|"deactivated"}``:
  blocking and unblocking send the bot a ``my_chat_member`` update (``kicked`` / ``member``),
  as Telegram does; so does a blocked user who writes again (before the message)
- ``POST /control/updates/message`` with ``as_chat: true`` (and a group ``chat_id``): an
  anonymous admin writing on behalf of the group (``sender_chat`` = the group, ``from`` =
  @GroupAnonymousBot)
- ``POST|GET /control/callback_queries`` ``{max_age}``: answerCallbackQuery for a query older
  than ``max_age`` seconds (default 15, Telegram's observed limit) fails "query is too old"
- ``POST /control/chats/{chat_id}/upgrade`` ``{new_chat_id?, user_id?, updates?}`` -> the
  new supergroup: a basic group becomes a supergroup with a new id (``-100…``); the service
  messages ``migrate_to_chat_id`` (old group) and ``migrate_from_chat_id`` (new one) are
  delivered as updates. From then on every call naming the old id answers 400 "group chat
  was upgraded to a supergroup chat" with ``parameters.migrate_to_chat_id``, as Telegram
  does (aiogram: TelegramMigrateToChat)
- ``GET /control/state``, ``POST /control/reset``, ``POST|GET|DELETE /control/faults``
- ``POST /control/limits`` ``{enforce, global_per_second?, per_chat_per_second?,
  per_chat_burst?, group_per_minute?, group_window?, retry_after?}`` -> the limits now in
  force; ``GET /control/limits``; ``GET /control/rate_stats`` -> what was sent when (below)

Flood control (off unless a test turns it on with ``/control/limits``). Telegram documents
about 30 messages/s overall, about 1/s per chat "with short bursts", and 20/min per group,
and answers 429 with ``parameters.retry_after`` beyond them. Modelled here, for the send
methods (sendMessage, sendPhoto, sendDocument; edits and callback answers are free), as:

- overall: at most ``global_per_second`` (30) sends in any sliding 1-second window;
- per chat: a token bucket of ``per_chat_burst`` (3) tokens refilled at
  ``per_chat_per_second`` (1/s), i.e. a burst of 3 and then 1/s;
- group/supergroup chats, additionally: at most ``group_per_minute`` (20) sends in any
  sliding ``group_window`` (60 s; tests shorten it) window.

Every admitted attempt counts (as with Telegram, a send that then fails still spent its
slot); a refused one does not. ``retry_after`` is the given number, else the whole seconds
until the limit frees. ``/control/rate_stats`` reports successful sends per calendar second
overall and per chat, the maxima over sliding windows, and the number of 429s answered.

Emulator simplifications, on purpose:

- Flood control is off by default (above); a 429 can also be injected as a fault, and the
  event log (``at`` per call, failed and faulted calls included) lets a test prove compliance.
- Webhook URLs may be plain ``http://`` on loopback (Telegram demands HTTPS); a failed
  delivery is retried after ``webhook_retry_delays`` and then dropped (Telegram keeps
  retrying for up to a day).
- MarkdownV2/Markdown are reduced to a plain rendering with a reserved-character check;
  only HTML yields ``entities``.
- Text limits (4,096 for texts, 1,024 for captions) count the visible text after entity
  parsing in UTF-16 code units, as Telegram does; markup does not count.
- A bare "&" is kept literally and a ";" after a reference is optional, as in tdlib; the
  emulator does not check link URLs (Telegram drops a text_link whose URL it rejects).
- Any upload is accepted as a photo; PNG/JPEG/GIF headers give the real width/height.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import math
import re
import struct
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from aiohttp.typedefs import Handler

from sandbox.common import FaultInjector, dumps, json_response, loads

MAX_TEXT_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024
MAX_CALLBACK_DATA_BYTES = 64
MAX_POLL_TIMEOUT = 50  # Telegram caps getUpdates' long poll near this
MAX_CONTROL_WAIT = 60.0
CALLBACK_MAX_AGE = 15.0  # seconds Telegram lets a callback query wait for its answer
# The fake sender of a message an anonymous group admin sends on behalf of the group.
GROUP_ANONYMOUS_BOT = {
    "id": 1087968824,
    "is_bot": True,
    "first_name": "Group",
    "username": "GroupAnonymousBot",
}
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
SEQ_HEADER = "X-Sandbox-Seq"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)
QUERY_TOO_OLD = "query is too old and response timeout expired or query ID is invalid"

# Parameters that arrive JSON-serialized in form data (aiogram sends every complex value so).
JSON_FIELDS = frozenset(
    {
        "reply_markup",
        "entities",
        "caption_entities",
        "link_preview_options",
        "reply_parameters",
        "commands",
        "scope",
        "allowed_updates",
        "menu_button",
        "media",
        "message_ids",
    }
)
INT_FIELDS = frozenset(
    {
        "chat_id",
        "from_chat_id",
        "message_id",
        "message_thread_id",
        "reply_to_message_id",
        "offset",
        "limit",
        "timeout",
        "cache_time",
        "max_connections",
        "user_id",
        "width",
        "height",
        "duration",
    }
)
BOOL_FIELDS = frozenset(
    {
        "show_alert",
        "drop_pending_updates",
        "disable_notification",
        "protect_content",
        "allow_sending_without_reply",
        "disable_web_page_preview",
        "has_spoiler",
        "show_caption_above_media",
        "disable_content_type_detection",
        "allow_paid_broadcast",
    }
)
CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
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
# Methods kept out of the event log: polling would flood it.
UNLOGGED_METHODS = frozenset({"getupdates"})
# Telegram's default update set (when allowed_updates is empty or never given).
DEFAULT_EXCLUDED_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})


# ----------------------------------------------------------------------- flood control
RATE_LIMITED_METHODS = frozenset({"sendmessage", "sendphoto", "senddocument"})


@dataclass
class RateLimits:
    enforce: bool = False
    global_per_second: int = 30
    per_chat_per_second: float = 1.0
    per_chat_burst: int = 3
    group_per_minute: int = 20
    group_window: float = 60.0
    retry_after: int | None = None  # fixed answer; None: seconds until the limit frees

    def to_json(self) -> dict[str, Any]:
        return {
            "enforce": self.enforce,
            "global_per_second": self.global_per_second,
            "per_chat_per_second": self.per_chat_per_second,
            "per_chat_burst": self.per_chat_burst,
            "group_per_minute": self.group_per_minute,
            "group_window": self.group_window,
            "retry_after": self.retry_after,
        }


class FloodControl:
    """Telegram's send limits (module docstring) and the record of what was sent when."""

    def __init__(self) -> None:
        self.limits = RateLimits()
        self._recent: collections.deque[float] = collections.deque()  # admitted, last second
        self._buckets: dict[int, tuple[float, float]] = {}  # chat -> (tokens, stamp)
        self._group_recent: dict[int, collections.deque[float]] = {}
        self.sent: list[tuple[float, int, bool]] = []  # (wall time, chat id, is group) when ok
        self.rejected = 0

    def configure(self, limits: RateLimits) -> None:
        self.limits = limits
        self._recent.clear()
        self._buckets.clear()
        self._group_recent.clear()

    def admit(self, chat_id: int, is_group: bool, now: float) -> int | None:
        """None when the send may go (and it is counted), else the retry_after to answer."""
        limits = self.limits
        if not limits.enforce:
            return None
        waits: list[float] = []
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        if len(self._recent) >= limits.global_per_second:
            waits.append(self._recent[0] + 1.0 - now)
        tokens, stamp = self._buckets.get(chat_id, (float(limits.per_chat_burst), now))
        tokens = min(
            float(limits.per_chat_burst), tokens + (now - stamp) * limits.per_chat_per_second
        )
        if tokens < 1.0:
            waits.append((1.0 - tokens) / limits.per_chat_per_second)
        group = self._group_recent.setdefault(chat_id, collections.deque()) if is_group else None
        if group is not None:
            while group and group[0] <= now - limits.group_window:
                group.popleft()
            if len(group) >= limits.group_per_minute:
                waits.append(group[0] + limits.group_window - now)
        if waits:
            self.rejected += 1
            if limits.retry_after is not None:
                return limits.retry_after
            return max(1, math.ceil(max(waits)))
        self._recent.append(now)
        self._buckets[chat_id] = (tokens - 1.0, now)
        if group is not None:
            group.append(now)
        return None

    def record(self, at: float, chat_id: int, is_group: bool) -> None:
        self.sent.append((at, chat_id, is_group))

    def stats(self) -> dict[str, Any]:
        per_second: dict[int, int] = collections.Counter(int(at) for at, _, _ in self.sent)
        by_chat: dict[int, list[float]] = {}
        groups: set[int] = set()
        for at, chat_id, is_group in self.sent:
            by_chat.setdefault(chat_id, []).append(at)
            if is_group:
                groups.add(chat_id)
        per_chat_max = {
            chat_id: max(collections.Counter(int(at) for at in times).values())
            for chat_id, times in by_chat.items()
        }
        all_times = [at for at, _, _ in self.sent]
        return {
            "limits": self.limits.to_json(),
            "sends": len(self.sent),
            "rejected_429": self.rejected,
            "per_second": {str(second): n for second, n in sorted(per_second.items())},
            "max_per_second": max(per_second.values(), default=0),
            "max_in_any_second": _max_in_window(all_times, 1.0),
            "per_chat_max_per_second": {str(c): n for c, n in per_chat_max.items()},
            "max_per_chat_per_second": max(per_chat_max.values(), default=0),
            "max_per_chat_in_any_second": max(
                (_max_in_window(times, 1.0) for times in by_chat.values()), default=0
            ),
            "group_max_in_window": {
                str(c): _max_in_window(by_chat[c], self.limits.group_window) for c in groups
            },
            "first_at": min(all_times, default=None),
            "last_at": max(all_times, default=None),
        }


def _max_in_window(times: list[float], window: float) -> int:
    """The most events in any half-open window ``(t - window, t]``."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best


# ---------------------------------------------------------------------------- errors
class BotApiError(Exception):
    """A Bot API failure, answered as ``{"ok": false, "error_code", "description"}``."""

    def __init__(
        self,
        error_code: int,
        description: str,
        *,
        retry_after: int | None = None,
        migrate_to_chat_id: int | None = None,
    ):
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.retry_after = retry_after
        self.migrate_to_chat_id = migrate_to_chat_id

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.error_code,
            "description": self.description,
        }
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        if self.migrate_to_chat_id is not None:
            body["parameters"] = {"migrate_to_chat_id": self.migrate_to_chat_id}
        return body


def bad_request(detail: str) -> BotApiError:
    return BotApiError(400, f"Bad Request: {detail}")


UNAUTHORIZED = BotApiError(401, "Unauthorized")
NOT_FOUND = BotApiError(404, "Not Found")


# ------------------------------------------------------------------------ formatting
class EntityParseError(ValueError):
    """Malformed markup; becomes 400 "Bad Request: can't parse entities: ..."."""


def utf16_len(text: str) -> int:
    """Entity offsets and lengths are counted in UTF-16 code units, as Telegram does."""
    return len(text.encode("utf-16-le")) // 2


HTML_TAG_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "span": "spoiler",  # only with class="tg-spoiler"
    "tg-spoiler": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_ATTR_SRC = r"""[a-zA-Z][\w-]*(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'<>]+))?"""
_START_TAG = re.compile(rf"<([a-zA-Z][a-zA-Z0-9-]*)((?:\s+{_ATTR_SRC})*)\s*/?>")
_END_TAG = re.compile(r"</([a-zA-Z][a-zA-Z0-9-]*)\s*>")
_ATTR = re.compile(r"""([a-zA-Z][\w-]*)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s"'<>]+))?""")
# As tdlib's decode_html_entity (td/telegram/MessageEntity.cpp): numeric references
# (decimal, or hexadecimal with a lowercase "x") and only four named ones, the ";" being
# optional. Anything else after "&" -- a bare "&" included -- is kept literally, not refused.
_CHAR_REF = re.compile(r"&(?:#x([0-9a-fA-F]*)|#([0-9]*)|([a-zA-Z]+));?")
_NAMED_REFS = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


def html_unescape(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        hexa, decimal, name = match.groups()
        if name is not None:
            return _NAMED_REFS.get(name, match.group(0))
        digits = hexa if hexa is not None else decimal
        if not digits or len(match.group(0).rstrip(";")) >= 10:
            return match.group(0)
        code = int(digits, 16 if hexa is not None else 10)
        return chr(code) if 0 < code < 0x10FFFF else match.group(0)

    return _CHAR_REF.sub(replace, text)


@dataclass
class _OpenTag:
    name: str
    offset: int  # UTF-16 offset in the plain text where the tag opened
    attrs: dict[str, str]
    language: str | None = None


def _close_entity(tag: _OpenTag, end: int, stack: list[_OpenTag]) -> dict[str, Any] | None:
    if tag.name == "code" and stack and stack[-1].name == "pre":
        # <pre><code class="language-x"> is one pre entity with a language, not two.
        css = tag.attrs.get("class", "")
        if css.startswith("language-"):
            stack[-1].language = css.removeprefix("language-")
        return None
    length = end - tag.offset
    if length <= 0:  # Telegram drops empty entities
        return None
    entity: dict[str, Any] = {"type": HTML_TAG_TYPES[tag.name], "offset": tag.offset}
    entity["length"] = length
    if tag.name == "a":
        href = tag.attrs.get("href")
        if not href:
            return None
        entity["url"] = href
    elif tag.name == "blockquote" and "expandable" in tag.attrs:
        entity["type"] = "expandable_blockquote"
    elif tag.name == "pre" and tag.language:
        entity["language"] = tag.language
    elif tag.name == "tg-emoji":
        entity["custom_emoji_id"] = tag.attrs["emoji-id"]
    return entity


def parse_html(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Telegram's HTML parse mode: ``(plain text, entities)`` or EntityParseError."""
    out: list[str] = []
    length = 0
    stack: list[_OpenTag] = []
    entities: list[dict[str, Any]] = []
    pos = 0
    while pos < len(text):
        lt = text.find("<", pos)
        chunk = text[pos:] if lt == -1 else text[pos:lt]
        if chunk:
            plain = html_unescape(chunk)
            out.append(plain)
            length += utf16_len(plain)
        if lt == -1:
            break
        byte_offset = len(text[:lt].encode())
        if end := _END_TAG.match(text, lt):
            name = end.group(1).lower()
            if not stack:
                raise EntityParseError(f"Unexpected end tag at byte offset {byte_offset}")
            top = stack.pop()
            if top.name != name:
                raise EntityParseError(
                    f'Unmatched end tag at byte offset {byte_offset}, expected "</{top.name}>", '
                    f'found "</{name}>"'
                )
            if entity := _close_entity(top, length, stack):
                entities.append(entity)
            pos = end.end()
            continue
        start = _START_TAG.match(text, lt)
        if start is None:
            # A bare "<" (e.g. "5 < 6" not written as "5 &lt; 6") is a classic bot bug.
            if text.startswith("</", lt):
                raise EntityParseError(f"Unexpected end tag at byte offset {byte_offset}")
            # Like tdlib: the tag name runs to the next space or ">" ("<3 Anna" names "3").
            name_match = re.match(r"<([^\s>]*)[\s>]", text[lt:])
            if name_match is None:
                raise EntityParseError(f"Unclosed start tag at byte offset {byte_offset}")
            bad = name_match.group(1).lower()
            raise EntityParseError(f'Unsupported start tag "{bad}" at byte offset {byte_offset}')
        name = start.group(1).lower()
        if name not in HTML_TAG_TYPES:
            raise EntityParseError(f'Unsupported start tag "{name}" at byte offset {byte_offset}')
        attrs: dict[str, str] = {}
        for attr in _ATTR.finditer(start.group(2)):
            value = attr.group(2) or ""
            if value[:1] in {'"', "'"}:
                value = value[1:-1]
            attrs[attr.group(1).lower()] = html_unescape(value)
        if name == "span" and attrs.get("class") != "tg-spoiler":
            raise EntityParseError(
                f'Tag "span" must have class "tg-spoiler" at byte offset {byte_offset}'
            )
        if name == "tg-emoji" and not attrs.get("emoji-id", "").isdigit():
            raise EntityParseError(
                f"Custom emoji entity must contain a valid custom emoji identifier "
                f"at byte offset {byte_offset}"
            )
        stack.append(_OpenTag(name, length, attrs))
        pos = start.end()
    if stack:
        raise EntityParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1].name}"')
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), entities


_MDV2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")


def parse_markdown_v2(text: str) -> str:
    """MarkdownV2 reduced to its plain rendering; unescaped reserved characters fail.

    Telegram rejects e.g. an unescaped "." or "!" outside entities, the most common
    MarkdownV2 bug. Formatting markers are dropped; links keep their text.
    """
    out: list[str] = []
    i = 0
    in_code = False
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if ch == "`":
            in_code = not in_code
        elif in_code:
            out.append(ch)
        elif ch in "*_~|[":
            pass
        elif ch == "]" and text.startswith("(", i + 1):
            close = text.find(")", i + 2)
            if close == -1:
                raise EntityParseError(f"Can't find end of a url at byte offset {i}")
            i = close
        elif ch == ">" and (i == 0 or text[i - 1] == "\n"):
            pass  # blockquote marker
        elif ch in _MDV2_RESERVED:
            raise EntityParseError(
                f"Character '{ch}' is reserved and must be escaped with the preceding '\\'"
            )
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def parse_markdown_legacy(text: str) -> str:
    """Legacy Markdown: drop *, _, ` markers and keep link texts."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[*_`]", "", text)


def format_text(
    text: str, parse_mode: Any, entities: Any = None
) -> tuple[str, list[dict[str, Any]]]:
    """What the user sees: ``(plain text, entities)`` for a text or caption."""
    mode = str(parse_mode or "").lower()
    try:
        if mode == "html":
            return parse_html(text)
        if mode == "markdownv2":
            return parse_markdown_v2(text), []
        if mode == "markdown":
            return parse_markdown_legacy(text), []
    except EntityParseError as exc:
        raise bad_request(f"can't parse entities: {exc}") from None
    if mode:
        raise bad_request("unsupported parse_mode")
    if entities is not None and not (
        isinstance(entities, list) and all(isinstance(e, dict) for e in entities)
    ):
        raise bad_request("can't parse entities JSON object")
    return text, list(entities or [])


# ---------------------------------------------------------------------------- files
@dataclass
class Upload:
    """A file field of a multipart request."""

    filename: str | None
    content_type: str | None
    data: bytes


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG, GIF or JPEG header."""
    if data.startswith(PNG_MAGIC) and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01, 0xFF) or 0xD0 <= marker <= 0xD7:
                i += 2 if marker != 0xFF else 1
                continue
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return int(width), int(height)
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def sniff_mime(data: bytes, fallback: str | None) -> str:
    if data.startswith(PNG_MAGIC):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return fallback or "application/octet-stream"


@dataclass
class StoredFile:
    file_id: str
    file_unique_id: str
    kind: str  # "photo" | "document"
    data: bytes | None  # None for a file given by URL (the emulator never fetches)
    file_path: str
    file_name: str | None = None
    mime_type: str | None = None
    url: str | None = None
    width: int = 512
    height: int = 512

    @property
    def size(self) -> int:
        return len(self.data or b"")

    def photo_size(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "width": self.width,
            "height": self.height,
            "file_size": self.size,
        }

    def document(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_size": self.size,
        }
        if self.file_name:
            body["file_name"] = self.file_name
        if self.mime_type:
            body["mime_type"] = self.mime_type
        return body


# ---------------------------------------------------------------------------- state
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
class _CallContext:
    """What a Bot API handler tells the event log about the call."""

    chat_id: int | str | None = None
    message_id: int | None = None
    touched: list[StoredMessage] = field(default_factory=list)


ApiHandler = Callable[[dict[str, Any], _CallContext], Awaitable[Any]]

_PARAMS_KEY = web.RequestKey("tg_params", dict)
_PARAMS_ERROR_KEY = web.RequestKey("tg_params_error", BotApiError)
_HANDLED_KEY = web.RequestKey("tg_handled", bool)


# ------------------------------------------------------------------- param decoding
def decode_params(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Bring form/query strings to the types the JSON API would carry."""
    params: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str):
            if key in JSON_FIELDS:
                try:
                    value = loads(value)
                except ValueError:
                    raise bad_request(f"can't parse {key} JSON object") from None
            elif key in INT_FIELDS and re.fullmatch(r"-?\d+", value.strip()):
                value = int(value)
            elif key in BOOL_FIELDS:
                value = value.strip().lower() in ("true", "1")
        params[key] = value
    return params


async def read_params(request: web.Request) -> dict[str, Any]:
    """Query string + JSON, urlencoded or multipart body, with uploads resolved."""
    raw: dict[str, Any] = dict(request.query)
    uploads: dict[str, Upload] = {}
    if request.can_read_body:
        ctype = request.content_type
        if ctype == "application/json":
            body = await request.read()
            try:
                data = loads(body) if body.strip() else {}
            except ValueError:
                raise bad_request("can't parse JSON request body") from None
            if not isinstance(data, dict):
                raise bad_request("JSON request body must be an object")
            raw.update(data)
        elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    uploads[key] = Upload(value.filename, value.content_type, value.file.read())
                elif isinstance(value, bytes | bytearray):
                    raw[key] = bytes(value).decode()
                else:
                    raw[key] = value
    params = decode_params(raw)
    # aiogram sends files as `photo=attach://<field>` plus a file field named <field>.
    referenced: set[str] = set()
    for key, value in list(params.items()):
        if isinstance(value, str) and value.startswith("attach://"):
            name = value.removeprefix("attach://")
            if name in uploads:
                params[key] = uploads[name]
                referenced.add(name)
    for name, upload in uploads.items():
        if name not in referenced:
            params[name] = upload
    return params


# ------------------------------------------------------------------------- emulator
class TelegramEmulator:
    """Bot API + control API for one bot token."""

    def __init__(
        self,
        token: str,
        *,
        bot_username: str = "AITokenSandboxBot",
        bot_first_name: str = "AI Token Sandbox",
        webhook_retry_delays: Sequence[float] = (0.05, 0.2, 0.5),
        webhook_timeout: float = 10.0,
        callback_max_age: float = CALLBACK_MAX_AGE,
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

        self._methods: dict[str, tuple[str, ApiHandler]] = {
            name.lower(): (name, handler)
            for name, handler in {
                "getMe": self._get_me,
                "getUpdates": self._get_updates,
                "setWebhook": self._set_webhook,
                "deleteWebhook": self._delete_webhook,
                "getWebhookInfo": self._get_webhook_info,
                "sendMessage": self._send_message,
                "sendPhoto": self._send_photo,
                "sendDocument": self._send_document,
                "editMessageText": self._edit_message_text,
                "editMessageCaption": self._edit_message_caption,
                "editMessageReplyMarkup": self._edit_message_reply_markup,
                "deleteMessage": self._delete_message,
                "deleteMessages": self._delete_messages,
                "answerCallbackQuery": self._answer_callback_query,
                "setMyCommands": self._set_my_commands,
                "getMyCommands": self._get_my_commands,
                "deleteMyCommands": self._delete_my_commands,
                "setChatMenuButton": self._set_chat_menu_button,
                "getChatMenuButton": self._get_chat_menu_button,
                "sendChatAction": self._send_chat_action,
                "getChat": self._get_chat,
                "getFile": self._get_file,
                "setMyName": self._bot_text_setter("name"),
                "getMyName": self._bot_text_getter("name"),
                "setMyDescription": self._bot_text_setter("description"),
                "getMyDescription": self._bot_text_getter("description"),
                "setMyShortDescription": self._bot_text_setter("short_description"),
                "getMyShortDescription": self._bot_text_getter("short_description"),
                "close": self._true,
                "logOut": self._true,
            }.items()
        }

        self.faults = FaultInjector()
        # The logging middleware sits outside the fault middleware so that faulted calls
        # still reach the event log (a test can see when the bot retried after a 429).
        self.app = web.Application(
            middlewares=[self._bot_api_middleware, self.faults.middleware],
            client_max_size=50 * 1024 * 1024,  # Telegram's upload limit for bots
        )
        self.faults.install_control_routes(self.app)
        self._add_routes(self.app)
        self.app.on_shutdown.append(self._on_shutdown)
        self.app.on_cleanup.append(self._on_cleanup)

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

    # ------------------------------------------------------------ change notification
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

    async def _on_shutdown(self, app: web.Application) -> None:
        # Release pending long polls at once instead of holding the shutdown.
        self._closing = True
        self._notify()

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    # ------------------------------------------------------------------ Bot API plumbing
    def _add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/bot{token}/{method}", self._bot_api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        c = "/control"
        app.router.add_post(f"{c}/chats", self._control_register_chat)
        app.router.add_post(f"{c}/chats/{{chat_id}}/upgrade", self._control_upgrade_chat)
        app.router.add_get(f"{c}/chats/{{chat_id}}/messages", self._control_messages)
        app.router.add_get(f"{c}/chats/{{chat_id}}/wait", self._control_chat_wait)
        app.router.add_post(f"{c}/updates/message", self._control_message)
        app.router.add_post(f"{c}/updates/callback", self._control_callback)
        app.router.add_post(f"{c}/updates/press", self._control_press)
        app.router.add_get(f"{c}/events", self._control_events)
        app.router.add_get(f"{c}/callback_answers", self._control_callback_answers)
        app.router.add_get(f"{c}/callback_answers/{{query_id}}", self._control_callback_answer)
        app.router.add_get(f"{c}/files/{{file_id}}", self._control_file)
        app.router.add_post(f"{c}/users/{{user_id}}/block", self._control_block)
        app.router.add_post(f"{c}/callback_queries", self._control_set_callback_age)
        app.router.add_get(f"{c}/callback_queries", self._control_get_callback_age)
        app.router.add_get(f"{c}/state", self._control_state)
        app.router.add_post(f"{c}/reset", self._control_reset)
        app.router.add_post(f"{c}/limits", self._control_set_limits)
        app.router.add_get(f"{c}/limits", self._control_get_limits)
        app.router.add_get(f"{c}/rate_stats", self._control_rate_stats)

    @web.middleware
    async def _bot_api_middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if not request.path.startswith("/bot"):
            return await handler(request)
        at = time.time()
        # Parse before the fault middleware runs: a "drop" fault closes the socket.
        try:
            request[_PARAMS_KEY] = await read_params(request)
        except BotApiError as exc:
            request[_PARAMS_KEY] = {}
            request[_PARAMS_ERROR_KEY] = exc
        status: int | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            if not request.get(_HANDLED_KEY):  # the fault middleware answered
                self._log_fault(request, at, status)

    def _log_fault(self, request: web.Request, at: float, status: int | None) -> None:
        method = request.match_info.get("method")
        if method is None or request.match_info.get("token") != self.token:
            return
        known = self._methods.get(method.lower())
        if method.lower() in UNLOGGED_METHODS:
            return
        params: dict[str, Any] = request.get(_PARAMS_KEY, {})
        self._log(
            Event(
                seq=self._next_seq(),
                at=at,
                method=known[0] if known else method,
                chat_id=params.get("chat_id"),
                message_id=_as_int(params.get("message_id")),
                ok=False,
                error_code=status,
                description="injected fault" if status else "injected fault: no answer",
                fault=True,
            )
        )

    def _log(self, event: Event) -> None:
        self.events.append(event)
        self._notify()

    async def _bot_api(self, request: web.Request) -> web.Response:
        request[_HANDLED_KEY] = True
        if request.match_info["token"] != self.token:
            return json_response(UNAUTHORIZED.payload(), 401)
        error: BotApiError | None = request.get(_PARAMS_ERROR_KEY)
        if error is not None:
            return json_response(error.payload(), error.error_code)
        status, body = await self.call(request.match_info["method"], request[_PARAMS_KEY])
        return json_response(body, status)

    async def call(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Run one Bot API method: ``(HTTP status, response body)``; logs the call."""
        at = time.time()
        known = self._methods.get(method.lower())
        ctx = _CallContext()
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
            sent_to = _as_int(params.get("chat_id"))
            if limited and sent_to is not None:
                self.flood.record(at, sent_to, self._is_group(sent_to))
        if method.lower() not in UNLOGGED_METHODS:
            chat_id = ctx.chat_id if ctx.chat_id is not None else params.get("chat_id")
            message_id = ctx.message_id
            if message_id is None:
                message_id = _as_int(params.get("message_id"))
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
        chat_id = _as_int(params.get("chat_id"))
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

    def _reply_target(self, chat: Chat, params: Mapping[str, Any]) -> int | None:
        reply = params.get("reply_parameters")
        if isinstance(reply, dict) and reply.get("message_id") is not None:
            target = _as_int(reply.get("message_id"))
            allow = bool(reply.get("allow_sending_without_reply"))
        else:
            target = _as_int(params.get("reply_to_message_id"))
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
        message_id = _as_int(params.get("message_id"))
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
        ctx: _CallContext,
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

    # ------------------------------------------------------------------- Bot API methods
    async def _true(self, params: dict[str, Any], ctx: _CallContext) -> bool:
        return True

    async def _get_me(self, params: dict[str, Any], ctx: _CallContext) -> dict[str, Any]:
        return {
            **self._bot_user(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(self, params: dict[str, Any], ctx: _CallContext) -> list[Any]:
        if self.webhook is not None:
            raise _webhook_conflict()
        offset = _as_int(params.get("offset")) or 0
        limit = min(max(_as_int(params.get("limit")) or 100, 1), 100)
        timeout = min(max(_as_int(params.get("timeout")) or 0, 0), MAX_POLL_TIMEOUT)
        if "allowed_updates" in params:
            self.allowed_updates = params["allowed_updates"] or None
        if offset < 0:
            # A negative offset keeps only the last -offset updates and forgets the rest.
            self.pending = self.pending[offset:]
        # A newer getUpdates terminates an older one still waiting (two bot instances).
        self._poll_generation += 1
        generation = self._poll_generation
        self._notify()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if offset > 0:  # updates below the offset are confirmed: forget them
                self.pending = [u for u in self.pending if u["update_id"] >= offset]
            if self.webhook is not None:
                raise _webhook_conflict()
            if generation != self._poll_generation:
                raise BotApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; "
                    "make sure that only one bot instance is running",
                )
            remaining = deadline - asyncio.get_running_loop().time()
            if self.pending or self._closing or remaining <= 0:
                return self.pending[:limit]
            await self._wait_change(remaining)

    async def _set_webhook(self, params: dict[str, Any], ctx: _CallContext) -> bool:
        url = str(params.get("url") or "")
        if not url:  # setWebhook with an empty url removes the webhook
            self.webhook = None
            self._notify()
            return True
        # Telegram insists on HTTPS; the emulator accepts http:// for loopback test servers.
        if not url.startswith(("http://", "https://")):
            raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            raise bad_request("secret token contains unallowed characters")
        if params.get("drop_pending_updates"):
            self.pending.clear()
        if "allowed_updates" in params:
            self.allowed_updates = params["allowed_updates"] or None
        self.webhook = Webhook(
            url=url,
            secret_token=str(secret) if secret else None,
            max_connections=_as_int(params.get("max_connections")) or 40,
        )
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._webhook_worker())
        self._notify()
        return True

    async def _delete_webhook(self, params: dict[str, Any], ctx: _CallContext) -> bool:
        self.webhook = None
        if params.get("drop_pending_updates"):
            self.pending.clear()
        self._notify()
        return True

    async def _get_webhook_info(self, params: dict[str, Any], ctx: _CallContext) -> dict[str, Any]:
        return self._webhook_info()

    def _webhook_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "url": "",
            "has_custom_certificate": False,
            "pending_update_count": len(self.pending),
        }
        hook = self.webhook
        if hook is not None:
            info.update(url=hook.url, max_connections=hook.max_connections, ip_address="127.0.0.1")
            if hook.last_error_date is not None:
                info["last_error_date"] = hook.last_error_date
                info["last_error_message"] = hook.last_error_message
            if self.allowed_updates:
                info["allowed_updates"] = self.allowed_updates
        return info

    async def _send_message(self, params: dict[str, Any], ctx: _CallContext) -> dict[str, Any]:
        chat = self._chat_for(params)
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise bad_request("message text is empty")
        plain, entities = format_text(text, params.get("parse_mode"), params.get("entities"))
        if not plain.strip():
            raise bad_request("message text is empty")
        if utf16_len(plain) > MAX_TEXT_LENGTH:
            raise bad_request("message is too long")
        markup = self._checked_markup(params)
        reply_to = self._reply_target(chat, params)
        message = self._new_message(chat, from_bot=True, sender=self._bot_user())
        message.text, message.plain, message.entities = text, plain, entities
        message.parse_mode = params.get("parse_mode")
        message.reply_markup, message.reply_to = markup, reply_to
        ctx.touched.append(message)
        ctx.message_id = message.message_id
        return self._message_api(message)

    async def _send_media(
        self, params: dict[str, Any], ctx: _CallContext, kind: str
    ) -> dict[str, Any]:
        chat = self._chat_for(params)
        caption = params.get("caption")
        plain, entities = "", list[dict[str, Any]]()
        if caption is not None:
            caption = str(caption)
            plain, entities = format_text(
                caption, params.get("parse_mode"), params.get("caption_entities")
            )
            if utf16_len(plain) > MAX_CAPTION_LENGTH:
                raise bad_request("message caption is too long")
        markup = self._checked_markup(params)
        reply_to = self._reply_target(chat, params)
        stored = self._resolve_file(params.get(kind), kind)
        message = self._new_message(chat, from_bot=True, sender=self._bot_user())
        message.caption, message.plain, message.entities = caption, plain, entities
        message.parse_mode = params.get("parse_mode")
        message.reply_markup, message.reply_to = markup, reply_to
        if kind == "photo":
            message.photo = [stored.photo_size()]
        else:
            message.document = stored.document()
        ctx.touched.append(message)
        ctx.message_id = message.message_id
        return self._message_api(message)

    async def _send_photo(self, params: dict[str, Any], ctx: _CallContext) -> dict[str, Any]:
        return await self._send_media(params, ctx, "photo")

    async def _send_document(self, params: dict[str, Any], ctx: _CallContext) -> dict[str, Any]:
        return await self._send_media(params, ctx, "document")

    async def _edit_message_text(self, params: dict[str, Any], ctx: _CallContext) -> dict[str, Any]:
        _, message = self._edit_target(params)
        if message.has_media:
            raise bad_request("there is no text in the message to edit")
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise bad_request("message text is empty")
        plain, entities = format_text(text, params.get("parse_mode"), params.get("entities"))
        if not plain.strip():
            raise bad_request("message text is empty")
        if utf16_len(plain) > MAX_TEXT_LENGTH:
            raise bad_request("message is too long")
        # Quirk: an edit without reply_markup removes the inline keyboard.
        markup = self._checked_markup(params)
        return self._apply_edit(
            message,
            ctx,
            plain=plain,
            entities=entities,
            markup=markup,
            text=text,
            parse_mode=params.get("parse_mode"),
        )

    async def _edit_message_caption(
        self, params: dict[str, Any], ctx: _CallContext
    ) -> dict[str, Any]:
        _, message = self._edit_target(params)
        if not message.has_media:
            raise bad_request("there is no caption in the message to edit")
        caption = params.get("caption")
        plain, entities = "", list[dict[str, Any]]()
        if caption is not None:
            caption = str(caption)
            plain, entities = format_text(
                caption, params.get("parse_mode"), params.get("caption_entities")
            )
            if utf16_len(plain) > MAX_CAPTION_LENGTH:
                raise bad_request("message caption is too long")
        markup = self._checked_markup(params)
        return self._apply_edit(
            message,
            ctx,
            plain=plain,
            entities=entities,
            markup=markup,
            caption=caption,
            parse_mode=params.get("parse_mode"),
        )

    async def _edit_message_reply_markup(
        self, params: dict[str, Any], ctx: _CallContext
    ) -> dict[str, Any]:
        _, message = self._edit_target(params)
        markup = self._checked_markup(params)
        return self._apply_edit(
            message, ctx, plain=message.plain, entities=message.entities, markup=markup
        )

    def _delete_one(self, chat: Chat, message_id: int | None, ctx: _CallContext) -> bool:
        message = self.messages.get(chat.id, {}).get(message_id) if message_id else None
        if message is None or message.deleted:
            return False
        message.deleted = True
        ctx.touched.append(message)
        return True

    async def _delete_message(self, params: dict[str, Any], ctx: _CallContext) -> bool:
        chat = self._chat_for(params, check_blocked=False)
        if not self._delete_one(chat, _as_int(params.get("message_id")), ctx):
            raise bad_request("message to delete not found")
        return True

    async def _delete_messages(self, params: dict[str, Any], ctx: _CallContext) -> bool:
        chat = self._chat_for(params, check_blocked=False)
        ids = params.get("message_ids")
        if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
            raise bad_request("message_ids must be a list of 1-100 identifiers")
        # Like Telegram: missing messages are skipped silently.
        for message_id in ids:
            self._delete_one(chat, _as_int(message_id), ctx)
        return True

    async def _answer_callback_query(self, params: dict[str, Any], ctx: _CallContext) -> bool:
        query = self.callbacks.get(str(params.get("callback_query_id") or ""))
        if query is None:
            raise bad_request(QUERY_TOO_OLD)
        ctx.chat_id, ctx.message_id = query.chat_id, query.message_id  # refusals too
        if query.answered or time.monotonic() - query.created > self.callback_max_age:
            raise bad_request(QUERY_TOO_OLD)
        text = params.get("text")
        if text is not None and len(str(text)) > 200:
            raise bad_request("MESSAGE_TOO_LONG")
        query.answered = True
        query.text = None if text is None else str(text)
        query.show_alert = bool(params.get("show_alert"))
        query.url = params.get("url")
        query.answered_at = time.time()
        return True

    @staticmethod
    def _commands_key(params: Mapping[str, Any]) -> tuple[str, str]:
        scope = params.get("scope") or {"type": "default"}
        return dumps(scope), str(params.get("language_code") or "")

    async def _set_my_commands(self, params: dict[str, Any], ctx: _CallContext) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise bad_request("commands must be a list of at most 100 BotCommand")
        for item in commands:
            if not isinstance(item, dict):
                raise bad_request("can't parse BotCommand")
            if not re.fullmatch(r"[a-z0-9_]{1,32}", str(item.get("command", ""))):
                raise bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(str(item.get("description", ""))) <= 256:
                raise bad_request("command description must be 1-256 characters long")
        key = self._commands_key(params)
        if commands:
            self.commands[key] = [
                {"command": c["command"], "description": c["description"]} for c in commands
            ]
        else:
            self.commands.pop(key, None)
        return True

    async def _get_my_commands(
        self, params: dict[str, Any], ctx: _CallContext
    ) -> list[dict[str, Any]]:
        return self.commands.get(self._commands_key(params), [])

    async def _delete_my_commands(self, params: dict[str, Any], ctx: _CallContext) -> bool:
        self.commands.pop(self._commands_key(params), None)
        return True

    async def _set_chat_menu_button(self, params: dict[str, Any], ctx: _CallContext) -> bool:
        chat_id: int | None = None
        if params.get("chat_id") is not None:
            chat_id = self._chat_for(params, check_blocked=False).id
        button = params.get("menu_button") or {"type": "default"}
        if not isinstance(button, dict) or button.get("type") not in (
            "default",
            "commands",
            "web_app",
        ):
            raise bad_request("can't parse menu button JSON object")
        self.menu_buttons[chat_id] = button
        return True

    async def _get_chat_menu_button(
        self, params: dict[str, Any], ctx: _CallContext
    ) -> dict[str, Any]:
        chat_id = _as_int(params.get("chat_id"))
        if chat_id in self.menu_buttons:
            return self.menu_buttons[chat_id]
        return self.menu_buttons.get(None, {"type": "default"})

    async def _send_chat_action(self, params: dict[str, Any], ctx: _CallContext) -> bool:
        self._chat_for(params)
        if params.get("action") not in CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        return True

    async def _get_chat(self, params: dict[str, Any], ctx: _CallContext) -> dict[str, Any]:
        chat = self._chat_for(params, check_blocked=False)
        # aiogram validates getChat into ChatFullInfo, which requires these fields.
        return {
            **chat.to_api(),
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": False,
                "limited_gifts": False,
                "unique_gifts": False,
                "premium_subscription": False,
                "gifts_from_channels": False,
            },
        }

    async def _get_file(self, params: dict[str, Any], ctx: _CallContext) -> dict[str, Any]:
        stored = self.files.get(str(params.get("file_id") or ""))
        if stored is None:
            raise bad_request("invalid file_id")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.size,
            "file_path": stored.file_path,
        }

    def _bot_text_setter(self, field_name: str) -> ApiHandler:
        async def setter(params: dict[str, Any], ctx: _CallContext) -> bool:
            key = (field_name, str(params.get("language_code") or ""))
            value = params.get(field_name)
            if value:
                self.bot_texts[key] = str(value)
            else:
                self.bot_texts.pop(key, None)
            return True

        return setter

    def _bot_text_getter(self, field_name: str) -> ApiHandler:
        async def getter(params: dict[str, Any], ctx: _CallContext) -> dict[str, Any]:
            language = str(params.get("language_code") or "")
            value = self.bot_texts.get((field_name, language), self.bot_texts.get((field_name, "")))
            if value is None and field_name == "name":
                value = self.bot_first_name
            return {field_name: value or ""}

        return getter

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return json_response(UNAUTHORIZED.payload(), 401)
        file_id = self.file_paths.get(request.match_info["path"])
        stored = self.files.get(file_id) if file_id else None
        if stored is None or stored.data is None:
            return json_response(NOT_FOUND.payload(), 404)
        return web.Response(body=stored.data, content_type=sniff_mime(stored.data, None))

    # ------------------------------------------------------------------ update delivery
    def _enqueue(self, kind: str, payload: dict[str, Any]) -> tuple[int, bool]:
        """Queue an update; False if the bot's allowed_updates filter drops it (as Telegram)."""
        update_id = next(self._update_ids)
        allowed = self.allowed_updates
        if (allowed and kind not in allowed) or (not allowed and kind in DEFAULT_EXCLUDED_UPDATES):
            return update_id, False
        self.pending.append({"update_id": update_id, kind: payload})
        self._notify()
        return update_id, True

    async def _webhook_worker(self) -> None:
        """Deliver pending updates one by one to the webhook while one is set."""
        failures = 0
        while not self._closing:
            hook = self.webhook
            if hook is None or not self.pending:
                await self._wait_change(None)
                continue
            update = self.pending[0]
            error = await self._deliver(hook, update)
            still_first = bool(self.pending) and self.pending[0] is update
            if error is None:
                failures = 0
                if still_first:
                    self.pending.pop(0)
                self._notify()
                continue
            hook.last_error_date = int(time.time())
            hook.last_error_message = error
            failures += 1
            if failures > len(self.webhook_retry_delays):
                failures = 0
                if still_first:
                    self.pending.pop(0)  # given up (Telegram would keep trying for a day)
                self._notify()
            else:
                await asyncio.sleep(self.webhook_retry_delays[failures - 1])

    async def _deliver(self, hook: Webhook, update: dict[str, Any]) -> str | None:
        """POST one update; None on success, else the error getWebhookInfo reports."""
        if self._http is None:
            self._http = ClientSession()
        headers = {"Content-Type": "application/json"}
        if hook.secret_token:
            headers[SECRET_HEADER] = hook.secret_token
        try:
            async with self._http.post(
                hook.url,
                data=dumps(update).encode(),
                headers=headers,
                timeout=ClientTimeout(total=self.webhook_timeout),
            ) as response:
                body = await response.read()
                if not 200 <= response.status < 300:
                    return f"Wrong response from the webhook: {response.status} {response.reason}"
        except (ClientError, TimeoutError) as exc:
            return f"Connection failed: {type(exc).__name__}: {exc}"
        await self._run_webhook_reply(body)
        return None

    async def _run_webhook_reply(self, body: bytes) -> None:
        """A webhook may answer with a method call as its response body; Telegram runs it."""
        if not body.strip():
            return
        try:
            payload = loads(body)
        except ValueError:
            return
        if isinstance(payload, dict) and isinstance(payload.get("method"), str):
            params = {k: v for k, v in payload.items() if k != "method"}
            try:
                decoded = decode_params(params)
            except BotApiError:
                return
            await self.call(payload["method"], decoded)

    # ----------------------------------------------------------------- control: helpers
    def _ensure_user(self, body: Mapping[str, Any], user_id: int) -> User:
        user = self.users.get(user_id)
        if user is None:
            user = self.users[user_id] = User(id=user_id)
        if body.get("first_name"):
            user.first_name = str(body["first_name"])
        if body.get("username"):
            user.username = str(body["username"])
        if body.get("language_code"):
            user.language_code = str(body["language_code"])
        return user

    def _set_blocked(self, user: User, reason: str | None) -> None:
        """Block/unblock the bot for ``user``; Telegram tells the bot with ``my_chat_member``
        whenever the bot's status in the private chat changes (a deleted account does not
        block anything: its chat just stops working, without an update)."""
        was_blocked = user.block_reason == "blocked"
        user.block_reason = reason
        is_blocked = reason == "blocked"
        chat = self.chats.get(user.id)
        if was_blocked == is_blocked or chat is None:
            return  # nothing changed, or the user never opened a chat with the bot
        bot = self._bot_user()
        member = {"status": "member", "user": bot}
        kicked = {"status": "kicked", "user": bot, "until_date": 0}
        self._enqueue(
            "my_chat_member",
            {
                "chat": chat.to_api(),
                "from": user.to_api(),
                "date": int(time.time()),
                "old_chat_member": member if is_blocked else kicked,
                "new_chat_member": kicked if is_blocked else member,
            },
        )

    def _ensure_private_chat(self, user: User) -> Chat:
        chat = self.chats.get(user.id)
        if chat is None:
            chat = self.chats[user.id] = Chat(id=user.id, type="private")
        chat.first_name, chat.username = user.first_name, user.username
        return chat

    def _inject_callback(
        self, user: User, chat: Chat, message_id: int, data: str
    ) -> tuple[int, str, bool]:
        message = self.messages.get(chat.id, {}).get(message_id)
        query_id = str(4_000_000_000_000_000 + next(self._callback_ids))
        instance = hashlib.sha256(f"{self.bot_id}:{chat.id}".encode()).hexdigest()[:15]
        payload: dict[str, Any] = {
            "id": query_id,
            "from": user.to_api(),
            "chat_instance": str(int(instance, 16)),
            "data": data,
        }
        if message is not None:
            payload["message"] = self._message_api(message)
        else:
            # An unknown message reaches the bot as InaccessibleMessage (date 0).
            payload["message"] = {"chat": chat.to_api(), "message_id": message_id, "date": 0}
        self.callbacks[query_id] = CallbackQuery(query_id, user.id, chat.id, message_id, data)
        update_id, queued = self._enqueue("callback_query", payload)
        return update_id, query_id, queued

    def _chat_records(self, chat_id: int) -> list[dict[str, Any]]:
        return [m.record() for m in self.messages.get(chat_id, {}).values()]

    # ------------------------------------------------------------- control: endpoints
    async def _control_register_chat(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        chat_id = _as_int(body.get("chat_id"))
        kind = body.get("type", "private")
        if chat_id is None or kind not in ("private", "group", "supergroup", "channel"):
            return _control_error(400, "need chat_id and type private|group|supergroup|channel")
        if kind == "private":
            user = self._ensure_user(body, chat_id)
            chat = self._ensure_private_chat(user)
        else:
            chat = self.chats.get(chat_id) or Chat(id=chat_id, type=kind)
            chat.type = kind
            chat.title = body.get("title") or chat.title
            chat.username = body.get("username") or chat.username
            chat.is_forum = bool(body.get("is_forum", chat.is_forum))
            self.chats[chat_id] = chat
        return json_response(chat.to_api())

    async def _control_upgrade_chat(self, request: web.Request) -> web.Response:
        """A basic group becomes a supergroup under a new id (what an owner's "upgrade",
        or turning on a forum or a public link, does). The old id stays answering 400.

        As Telegram, both chats get a service message, delivered to the bot as updates:
        ``migrate_to_chat_id`` in the old group, ``migrate_from_chat_id`` in the new one.
        ``{user_id?}`` is who upgraded it (the service messages' sender);
        ``{updates: false}`` stores them without delivering, as for a bot that missed them
        (it was down past Telegram's 24 h, or another replica is the one sending)."""
        old = self.chats.get(_as_int(request.match_info["chat_id"]) or 0)
        if old is None or old.type != "group" or old.migrated_to is not None:
            return _control_error(400, "only a registered, not yet upgraded basic group")
        body = await _json_body(request)
        # Telegram's supergroup ids are -100 followed by the channel id.
        new_id = _as_int(body.get("new_chat_id")) or int(f"-100{abs(old.id)}")
        if new_id in self.chats:
            return _control_error(409, "new_chat_id is taken")
        new = Chat(id=new_id, type="supergroup", title=old.title, username=old.username)
        self.chats[new_id] = new
        owner = self._ensure_user({}, _as_int(body.get("user_id")) or 1)
        for chat, service in (
            (old, {"migrate_to_chat_id": new_id}),
            (new, {"migrate_from_chat_id": old.id}),
        ):
            message = self._new_message(chat, from_bot=False, sender=owner.to_api())
            message.service, message.seq = service, self._next_seq()
            if body.get("updates", True):
                self._enqueue("message", self._message_api(message))
        old.migrated_to = new_id
        return json_response(new.to_api())

    async def _control_message(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        user_id = _as_int(body.get("user_id"))
        text = body.get("text")
        if user_id is None or not isinstance(text, str) or not text:
            return _control_error(400, "need user_id and text")
        body.setdefault("first_name", "Buyer")
        body.setdefault("language_code", "en")
        user = self._ensure_user(body, user_id)
        if user.block_reason == "deactivated":
            return _control_error(409, f"user {user_id} is deactivated and cannot write")
        chat_id = _as_int(body.get("chat_id"))
        if chat_id is None or chat_id == user_id:
            # Writing to the bot unblocks it, as in the real app: the bot hears so first.
            chat = self._ensure_private_chat(user)
            self._set_blocked(user, None)
        elif (found := self.chats.get(chat_id)) is not None:
            chat = found
        else:
            return _control_error(404, f"chat {chat_id} is not registered")
        as_chat = bool(body.get("as_chat"))
        if as_chat and chat.type not in ("group", "supergroup"):
            return _control_error(400, "as_chat needs a group chat_id")
        message = self._new_message(
            chat,
            from_bot=False,
            sender=dict(GROUP_ANONYMOUS_BOT) if as_chat else user.to_api(),
        )
        if as_chat:
            message.sender_chat = chat.to_api()
        message.text = message.plain = text
        message.seq = self._next_seq()
        command = re.match(r"/[A-Za-z0-9_]+(?:@[A-Za-z0-9_]+)?", text)
        if command:
            length = utf16_len(command.group(0))
            message.entities = [{"type": "bot_command", "offset": 0, "length": length}]
        update_id, queued = self._enqueue("message", self._message_api(message))
        return json_response(
            {"update_id": update_id, "message_id": message.message_id, "queued": queued}
        )

    def _callback_parties(self, body: Mapping[str, Any]) -> tuple[User, Chat] | web.Response:
        user_id = _as_int(body.get("user_id"))
        if user_id is None:
            return _control_error(400, "need user_id")
        user = self.users.get(user_id) or self._ensure_user(body, user_id)
        chat_id = _as_int(body.get("chat_id"))
        chat = self.chats.get(user_id if chat_id is None else chat_id)
        if chat is None:
            return _control_error(404, f"chat {chat_id or user_id} not found")
        return user, chat

    async def _control_callback(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        parties = self._callback_parties(body)
        if isinstance(parties, web.Response):
            return parties
        message_id = _as_int(body.get("message_id"))
        if message_id is None or not isinstance(body.get("data"), str):
            return _control_error(400, "need message_id and data")
        update_id, query_id, queued = self._inject_callback(*parties, message_id, body["data"])
        return json_response(
            {"update_id": update_id, "callback_query_id": query_id, "queued": queued}
        )

    async def _control_press(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        parties = self._callback_parties(body)
        if isinstance(parties, web.Response):
            return parties
        user, chat = parties
        wanted = str(body.get("text", ""))
        match = body.get("match", "exact")
        if match not in ("exact", "prefix", "contains"):
            return _control_error(400, "match must be exact, prefix or contains")
        message_id = _as_int(body.get("message_id"))
        messages = list(self.messages.get(chat.id, {}).values())
        if message_id is not None:
            candidates = [m for m in messages if m.message_id == message_id]
        else:
            candidates = [m for m in reversed(messages) if m.from_bot and not m.deleted]
        available: list[str] = []
        for message in candidates:
            for row in inline_buttons(message.reply_markup):
                for button in row:
                    label = button["text"]
                    available.append(label)
                    if "callback_data" not in button or not _label_matches(label, wanted, match):
                        continue
                    data = button["callback_data"]
                    update_id, query_id, queued = self._inject_callback(
                        user, chat, message.message_id, data
                    )
                    return json_response(
                        {
                            "update_id": update_id,
                            "callback_query_id": query_id,
                            "message_id": message.message_id,
                            "data": data,
                            "queued": queued,
                        }
                    )
        where = f"message {message_id}" if message_id is not None else f"chat {chat.id}"
        return _control_error(
            404,
            f"no callback button {wanted!r} ({match}) in {where}; available: {available}",
            available=available,
        )

    async def _control_messages(self, request: web.Request) -> web.Response:
        chat_id = _as_int(request.match_info["chat_id"])
        records = self._chat_records(chat_id) if chat_id is not None else []
        response = json_response(records)
        # The snapshot's seq: waiting for "after_seq=<this>" can never miss a change.
        response.headers[SEQ_HEADER] = str(self._seq)
        return response

    async def _control_chat_wait(self, request: web.Request) -> web.Response:
        chat_id = _as_int(request.match_info["chat_id"])
        after = _as_int(request.query.get("after_seq")) or 0
        timeout = min(_as_float(request.query.get("timeout"), 10.0), MAX_CONTROL_WAIT)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            events = []
            for event in reversed(self.events):
                if event.seq <= after:
                    break
                if event.chat_id == chat_id:
                    events.append(event.to_json())
            remaining = deadline - asyncio.get_running_loop().time()
            if events or self._closing or remaining <= 0:
                return json_response({"seq": self._seq, "events": events[::-1]})
            await self._wait_change(remaining)

    async def _control_events(self, request: web.Request) -> web.Response:
        after = _as_int(request.query.get("after_seq")) or 0
        chat_id = _as_int(request.query.get("chat_id"))
        events = [
            e.to_json()
            for e in self.events
            if e.seq > after and (chat_id is None or e.chat_id == chat_id)
        ]
        return json_response(events)

    async def _control_callback_answers(self, request: web.Request) -> web.Response:
        wanted = request.query.get("callback_query_id")
        answers = [
            q.to_json()
            for q in self.callbacks.values()
            if q.answered and (wanted is None or q.id == wanted)
        ]
        return json_response(answers)

    async def _control_callback_answer(self, request: web.Request) -> web.Response:
        query_id = request.match_info["query_id"]
        timeout = min(_as_float(request.query.get("timeout"), 0.0), MAX_CONTROL_WAIT)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            query = self.callbacks.get(query_id)
            if query is None:
                return _control_error(404, f"unknown callback query {query_id}")
            remaining = deadline - asyncio.get_running_loop().time()
            if query.answered or self._closing or remaining <= 0:
                return json_response(query.to_json())
            await self._wait_change(remaining)

    async def _control_file(self, request: web.Request) -> web.Response:
        stored = self.files.get(request.match_info["file_id"])
        if stored is None:
            return _control_error(404, "unknown file_id")
        if stored.data is None:
            return _control_error(404, "file was sent by URL; no bytes stored", url=stored.url)
        return web.Response(body=stored.data, content_type=sniff_mime(stored.data, None))

    async def _control_block(self, request: web.Request) -> web.Response:
        user_id = _as_int(request.match_info["user_id"])
        if user_id is None:
            return _control_error(400, "bad user id")
        body = await _json_body(request)
        reason = body.get("reason", "blocked")
        if reason not in ("blocked", "deactivated"):
            return _control_error(400, "reason must be blocked or deactivated")
        user = self.users.get(user_id) or self._ensure_user({}, user_id)
        self._set_blocked(user, reason if body.get("blocked", True) else None)
        return json_response({"user_id": user_id, "blocked": user.block_reason})

    async def _control_set_callback_age(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        try:
            max_age = float(body["max_age"])
        except (KeyError, TypeError, ValueError):
            return _control_error(400, "need max_age (seconds)")
        if max_age < 0:
            return _control_error(400, "max_age must not be negative")
        self.callback_max_age = max_age
        return json_response({"max_age": self.callback_max_age})

    async def _control_get_callback_age(self, request: web.Request) -> web.Response:
        return json_response({"max_age": self.callback_max_age})

    async def _control_state(self, request: web.Request) -> web.Response:
        chats = []
        for chat in self.chats.values():
            user = self.users.get(chat.id) if chat.type == "private" else None
            chats.append(
                {
                    **chat.to_api(),
                    "messages": len(self.messages.get(chat.id, {})),
                    "blocked": user.block_reason if user else None,
                }
            )
        return json_response(
            {
                "webhook": (
                    self._webhook_info() | {"secret_token": self.webhook.secret_token}
                    if self.webhook
                    else None
                ),
                "pending_updates": len(self.pending),
                "updates": self.pending,
                "allowed_updates": self.allowed_updates,
                "chats": chats,
                "users": [u.to_api() | {"blocked": u.block_reason} for u in self.users.values()],
                "commands": [
                    {"scope": loads(scope), "language_code": lang, "commands": commands}
                    for (scope, lang), commands in self.commands.items()
                ],
                "seq": self._seq,
            }
        )

    async def _control_set_limits(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        current = self.flood.limits.to_json()
        unknown = sorted(set(body) - set(current))
        if unknown:
            return _control_error(400, f"unknown limit fields {unknown}", known=sorted(current))
        merged = {**current, **body}
        try:
            limits = RateLimits(
                enforce=bool(merged["enforce"]),
                global_per_second=int(merged["global_per_second"]),
                per_chat_per_second=float(merged["per_chat_per_second"]),
                per_chat_burst=int(merged["per_chat_burst"]),
                group_per_minute=int(merged["group_per_minute"]),
                group_window=float(merged["group_window"]),
                retry_after=None if merged["retry_after"] is None else int(merged["retry_after"]),
            )
        except (TypeError, ValueError) as exc:
            return _control_error(400, f"bad limits: {exc}")
        if min(limits.global_per_second, limits.per_chat_burst, limits.group_per_minute) < 1 or (
            limits.per_chat_per_second <= 0 or limits.group_window <= 0
        ):
            return _control_error(400, "limits must be positive")
        self.flood.configure(limits)
        return json_response(limits.to_json())

    async def _control_get_limits(self, request: web.Request) -> web.Response:
        return json_response(self.flood.limits.to_json())

    async def _control_rate_stats(self, request: web.Request) -> web.Response:
        return json_response(self.flood.stats())

    async def _control_reset(self, request: web.Request) -> web.Response:
        self._reset_state()
        self.faults.clear()
        self._notify()
        return json_response({"ok": True})


# ------------------------------------------------------------------------ utilities
def _webhook_conflict() -> BotApiError:
    return BotApiError(
        409,
        "Conflict: can't use getUpdates method while webhook is active; "
        "use deleteWebhook to delete the webhook first",
    )


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def _as_float(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


def _label_matches(label: str, wanted: str, match: str) -> bool:
    label, wanted = label.strip(), wanted.strip()
    if match == "prefix":
        return label.startswith(wanted)
    if match == "contains":
        return wanted in label
    return label == wanted


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = loads(raw)
    except ValueError:
        raise web.HTTPBadRequest(
            text=dumps({"error": "body is not JSON"}), content_type="application/json"
        ) from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(
            text=dumps({"error": "body must be a JSON object"}), content_type="application/json"
        )
    return data


def _control_error(status: int, message: str, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status)
