"""Joining consecutive messages to an admin group into one Telegram message.

Admin groups take 20 messages a minute; a busy shop writes more alerts than that.
Consecutive pending messages to a group are joined into one Telegram message (up to
``COALESCE_MAX``, within Telegram's 4,096 characters as it counts them) instead of
queueing for minutes."""

from __future__ import annotations

from typing import Any

from db.models import OutboxMessage
from services.message_text import telegram_length

COALESCE_MAX = 25
COALESCE_CHARS = 3800
COALESCE_BUTTON_ROWS = 8


def chat_bundles(rows: list[OutboxMessage]) -> list[list[OutboxMessage]]:
    """Consecutive rows of one group chat, joined while they fit one message."""
    bundles: list[list[OutboxMessage]] = []
    size = 0
    for row in rows:
        current = bundles[-1] if bundles else None
        if (
            current is not None
            and joinable(row)
            and joinable(current[-1])
            and thread_of(row) == thread_of(current[-1])
            and len(current) < COALESCE_MAX
            and size + telegram_length(row.text) + 2 <= COALESCE_CHARS
        ):
            current.append(row)
            size += telegram_length(row.text) + 2
        else:
            bundles.append([row])
            size = telegram_length(row.text)
    return bundles


def joinable(row: OutboxMessage) -> bool:
    # A key delivery is decrypted at send time and a broadcast is counted per row.
    return not (row.payload or {}).get("secret_key_of") and row.broadcast_id is None


def thread_of(row: OutboxMessage) -> int | None:
    """The forum topic a row goes to (None: the chat itself); only rows of one topic join."""
    thread = (row.payload or {}).get("message_thread_id")
    return int(thread) if thread is not None else None


def joined_row(rows: list[OutboxMessage]) -> OutboxMessage:
    """A transient row (never added to a session) carrying the joined text and buttons.

    It keeps the first row's id and attempts, so the send's outcome is recorded there."""
    buttons = [r for row in rows for r in ((row.payload or {}).get("buttons") or [])]
    first = rows[0]
    payload: dict[str, Any] = {}
    if buttons:
        payload["buttons"] = buttons[:COALESCE_BUTTON_ROWS]
    if thread_of(first) is not None:
        payload["message_thread_id"] = thread_of(first)
    return OutboxMessage(
        id=first.id,
        chat_id=first.chat_id,
        kind=first.kind,
        text="\n\n".join(row.text for row in rows),
        payload=payload or None,
        category=first.category,
        attempts=first.attempts,
        next_attempt_at=first.next_attempt_at,
        created_at=first.created_at,
        status=first.status,
    )
