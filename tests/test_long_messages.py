"""Admin output longer than one Telegram message is split, never refused (issue 10, item 5).

The emulator refuses, as Telegram does, a text over 4,096 UTF-16 code units of visible
text ("Bad Request: message is too long"); every answer here is checked there.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

from db import repo
from processing.fulfilment import KEY_NAME_PREFIX
from sandbox.runner import ADMIN_ID
from sandbox.telegram import utf16_len
from services.message_text import split_html, telegram_length
from tests.harness import Env, running_env

BUYER = 747474


async def _answers_after(env: Env, chat: int, text: str, last: str) -> list[dict[str, Any]]:
    """Send ``text`` as the admin; the bot's messages up to the one containing ``last``."""
    before = max((m["message_id"] for m in await env.tg.messages(chat)), default=0)
    seq = max((e["seq"] for e in await env.tg.events()), default=0)
    await env.tg.send_text(ADMIN_ID, text, chat_id=None if chat == ADMIN_ID else chat)
    await env.tg.wait_for(
        chat,
        lambda m: m["from_bot"] and m["message_id"] > before and last in (m["plain"] or ""),
        timeout=20,
    )
    refused = [e for e in await env.tg.events(after_seq=seq) if not e["ok"]]
    assert refused == [], refused
    return [m for m in await env.tg.messages(chat) if m["from_bot"] and m["message_id"] > before]


def _fits(messages: list[dict[str, Any]]) -> None:
    assert len(messages) > 1
    assert all(0 < utf16_len(m["plain"]) <= 4096 for m in messages)


async def test_order_with_a_long_timeline_is_split(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        async with env.app.sessions() as session, session.begin():
            for n in range(150):
                repo.add_event(session, order_id, f"note_{n:03d}", actor="admin:😀")
        parts = await _answers_after(env, ADMIN_ID, f"/order {order_id}", "note_149")
        _fits(parts)
        text = "\n".join(m["plain"] for m in parts)
        assert parts[0]["plain"].startswith(f"📦 Order #{order_id}") or f"#{order_id}" in text
        assert all(f"note_{n:03d}" in text for n in range(150))


async def test_reconcile_with_many_mismatches_is_split(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        for n in range(80):
            await env.app.openrouter.create_key(
                f"{KEY_NAME_PREFIX}stray-key-number-{n:03d}-" + "x" * 20, Decimal("1.50")
            )
        parts = await _answers_after(env, ADMIN_ID, "/reconcile", "stray-key-number-079")
        _fits(parts)
        text = "\n".join(m["plain"] for m in parts)
        assert all(f"stray-key-number-{n:03d}" in text for n in range(80))


async def test_broadcast_of_maximum_length_is_previewed_and_sent(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        # 4,096 UTF-16 units as Telegram counts them: "&" is one character once escaped,
        # an emoji two.
        body = "A & B " + "😀" * 2042 + "!!!!!!"
        assert utf16_len(body) == 4096
        parts = await _answers_after(env, ADMIN_ID, f"/broadcast {body}", "It will go to")
        _fits(parts)
        assert any(m["plain"] == body for m in parts), "the text is shown whole, as sent"
        await env.tg.press(ADMIN_ID, "✅ Send to", match="prefix")
        got = await env.tg.wait_for_text(BUYER, "A & B")
        assert got["plain"] == body

        # One unit more cannot go to a buyer as one message: refused before any draft.
        answer = await _answers_after(env, ADMIN_ID, f"/broadcast {body}!", "too long")
        assert "4,097 characters" in answer[-1]["plain"] and "4,096" in answer[-1]["plain"]


def test_split_html_counts_like_telegram_and_keeps_tags_balanced() -> None:
    assert telegram_length("<b>a&amp;b</b> 😀") == 6
    long = "<b>" + "\n".join(f"line {n} <code>x&lt;{n}</code>" for n in range(800)) + "</b>"
    parts = split_html(long)
    assert len(parts) > 1 and all(telegram_length(p) <= 4096 for p in parts)
    assert all(p.startswith("<b>") and p.endswith("</b>") for p in parts)
    # One huge line is cut between characters, never inside a character reference.
    parts = split_html("&amp;" * 5000)
    assert [telegram_length(p) for p in parts] == [4096, 904]
    assert all(p.endswith("&amp;") for p in parts)


async def test_outbox_splits_a_message_longer_than_telegram_allows(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.tg.register_chat(BUYER, "private", first_name="Ann")
        text = "\n".join(f"<b>line {n:04d}</b> 😀" for n in range(400))  # ~5,600 units
        async with env.app.sessions() as session, session.begin():
            await repo.add_outbox(session, chat_id=BUYER, text=text, dedupe_key="long")
        env.app.outbox.wake()
        await env.tg.wait_for_text(BUYER, "line 0399", timeout=20)
        got = [m for m in await env.tg.messages(BUYER) if m["from_bot"]]
        _fits(got)
        assert "\n".join(m["plain"] for m in got) == "\n".join(
            f"line {n:04d} 😀" for n in range(400)
        )
        # The last part reached Telegram; the row is marked sent just after (its own commit).
        for _ in range(100):
            if [row.status for row in await env.outbox()] == ["sent"]:
                break
            await asyncio.sleep(0.1)
        assert [row.status for row in await env.outbox()] == ["sent"]
