"""A model's Markdown answer as Telegram-safe HTML.

Models answer in Markdown; Telegram understands a small HTML subset (b, i, s, code, pre,
a, blockquote) and refuses a message whose markup does not parse. The answer is parsed
with markdown-it (raw HTML off, so a ``<script>`` in the answer is text) and rebuilt from
its tokens with only those tags; every piece of text is escaped. Headings become bold
lines, list items get bullets or numbers, tables stay as the text the model wrote.
A half-written answer (while streaming) parses too: an unclosed ``**`` stays literal.
"""

from __future__ import annotations

from functools import cache
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from markdown_it.token import Token
_SAFE_SCHEMES = ("http://", "https://", "tg://", "mailto:")


@cache
def _parser() -> MarkdownIt:
    # Imported on the first answer: an idle bot, or one whose buyers never chat, does
    # not carry markdown-it (issue 14 item 6).
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("strikethrough")


_INLINE_TAGS = {
    "strong_open": "<b>",
    "strong_close": "</b>",
    "em_open": "<i>",
    "em_close": "</i>",
    "s_open": "<s>",
    "s_close": "</s>",
}


def markdown_to_html(text: str) -> str:
    """Telegram HTML for ``text``; never raises, never lets the model's markup through."""
    out: list[str] = []
    lists: list[list[int]] = []  # per open list: [next number] (0 for bullets)
    for token in _parser().parse(text):
        _block(token, out, lists)
    html = "".join(out).strip()
    return html or escape(text.strip(), quote=False)


def _block(token: Token, out: list[str], lists: list[list[int]]) -> None:
    kind = token.type
    if kind == "inline":
        out.append(_inline(token.children or []))
    elif kind == "paragraph_close":
        out.append("\n" if token.hidden else "\n\n")
    elif kind == "heading_open":
        out.append("<b>")
    elif kind == "heading_close":
        out.append("</b>\n\n")
    elif kind == "bullet_list_open":
        lists.append([0])
    elif kind == "ordered_list_open":
        lists.append([int(token.attrGet("start") or 1)])
    elif kind in ("bullet_list_close", "ordered_list_close"):
        lists.pop()
        if not lists:
            out.append("\n")
    elif kind == "list_item_open":
        indent = "  " * (len(lists) - 1)
        counter = lists[-1]
        if counter[0]:
            out.append(f"{indent}{counter[0]}. ")
            counter[0] += 1
        else:
            out.append(f"{indent}• ")
    elif kind == "blockquote_open":
        out.append("<blockquote>")
    elif kind == "blockquote_close":
        while out and out[-1].endswith("\n"):
            out[-1] = out[-1].rstrip("\n")
        out.append("</blockquote>\n\n")
    elif kind in ("fence", "code_block"):
        language = (token.info or "").split(" ")[0].strip()
        code = escape(token.content.rstrip("\n"), quote=False)
        if language:
            attr = escape(language, quote=True)
            out.append(f'<pre><code class="language-{attr}">{code}</code></pre>\n\n')
        else:
            out.append(f"<pre>{code}</pre>\n\n")
    elif kind == "hr":
        out.append("———\n\n")


def _inline(children: list[Token]) -> str:
    parts: list[str] = []
    links: list[bool] = []  # per open link: whether it became an <a>
    for child in children:
        kind = child.type
        if kind == "text":
            parts.append(escape(child.content, quote=False))
        elif kind == "code_inline":
            parts.append(f"<code>{escape(child.content, quote=False)}</code>")
        elif kind in _INLINE_TAGS:
            parts.append(_INLINE_TAGS[kind])
        elif kind in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif kind == "link_open":
            href = str(child.attrGet("href") or "")
            safe = href.lower().startswith(_SAFE_SCHEMES)
            links.append(safe)
            if safe:
                parts.append(f'<a href="{escape(href, quote=True)}">')
        elif kind == "link_close":
            if links.pop():
                parts.append("</a>")
        elif kind == "image":
            parts.append(escape(child.content or str(child.attrGet("src") or ""), quote=False))
        else:
            parts.append(escape(child.content, quote=False))
    return "".join(parts)
