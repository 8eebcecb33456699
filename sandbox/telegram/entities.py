"""Message formatting as Telegram parses it: HTML entities, MarkdownV2 checks, UTF-16 lengths."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sandbox.telegram.errors import bad_request


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
