"""Telegram's message limits, counted as Telegram counts, and splitting long HTML to fit.

Telegram limits a message to 4,096 characters and a caption to 1,024 "after entities
parsing" (Bot API, sendMessage): the visible text once the HTML tags are gone and the
character references decoded, measured in UTF-16 code units (an emoji outside the BMP
counts two). The markup itself does not count. The one home for these rules: every
sender of possibly long text (admin command answers, the outbox) splits with
``split_html``.
"""

from __future__ import annotations

import html
import re

MAX_MESSAGE_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024

_TAG = re.compile(r"<(/?)([a-zA-Z][\w-]*)[^>]*>")
# One visible unit of HTML text: a tag (counts nothing), a character reference, a character.
_TOKEN = re.compile(r"<[^>]*>|&#?\w+;|[\s\S]")
# Preferred places to split, best first: between paragraphs, then between lines.
_BREAKS = ("\n\n", "\n")


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def telegram_length(html_text: str) -> int:
    """The length Telegram checks against its limits for a text sent with parse_mode HTML."""
    return utf16_length(html.unescape(_TAG.sub("", html_text)))


def split_html(html_text: str, limit: int = MAX_MESSAGE_LENGTH) -> list[str]:
    """``html_text`` in as few parts as fit ``limit`` each, split between paragraphs, else
    between lines, else (one huge line) between characters; never inside a tag or a
    character reference. A tag left open at a split is closed there and reopened in the
    next part, so each part parses on its own. Blank parts are left out."""
    if telegram_length(html_text) <= limit:
        return [html_text]
    parts = [p for p in _pack(html_text, limit, _BREAKS) if html.unescape(_TAG.sub("", p)).strip()]
    return _balanced(parts)


def _pack(text: str, limit: int, breaks: tuple[str, ...]) -> list[str]:
    if telegram_length(text) <= limit:
        return [text]
    if not breaks:
        return _hard_split(text, limit)
    sep, finer = breaks[0], breaks[1:]
    out: list[str] = []
    current: str | None = None
    for piece in text.split(sep):
        for sub in _pack(piece, limit, finer):
            if current is not None and telegram_length(current + sep + sub) <= limit:
                current = current + sep + sub
                continue
            if current is not None:
                out.append(current)
            current = sub
    if current is not None:
        out.append(current)
    return out


def _hard_split(text: str, limit: int) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    size = 0
    for token in _TOKEN.findall(text):
        units = (
            0 if token.startswith("<") and len(token) > 1 else utf16_length(html.unescape(token))
        )
        if size + units > limit and current:
            out.append("".join(current))
            current, size = [], 0
        current.append(token)
        size += units
    if current:
        out.append("".join(current))
    return out


def _balanced(parts: list[str]) -> list[str]:
    """Close at the end of each part the tags still open there; reopen them in the next."""
    out: list[str] = []
    carried: list[tuple[str, str]] = []  # (name, opening tag as written)
    for part in parts:
        stack = list(carried)
        for match in _TAG.finditer(part):
            name = match.group(2).lower()
            if not match.group(1):
                stack.append((name, match.group(0)))
                continue
            for index in range(len(stack) - 1, -1, -1):
                if stack[index][0] == name:
                    del stack[index]
                    break
        opening = "".join(tag for _, tag in carried)
        closing = "".join(f"</{name}>" for name, _ in reversed(stack))
        out.append(opening + part + closing)
        carried = stack
    return out
