"""💬 Chat (issue 16): the buyer talks to their model on their own key, streamed.

End to end: the real dispatcher, database and HTTP server against the Telegram and
OpenRouter emulators. The fake model is deterministic ("echo: …", "long: N"), and a
stream can be held after N pieces, so a test sees a half-written answer without timers.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.models import ChatMessage
from sandbox.runner import ADMIN_ID
from tests.harness import Env, running_env

BUYER = 161616
FOOTER = re.compile(r"This answer: \$([\d.]+) · credit left: \$([\d.,]+)")


async def _delivered(env: Env) -> dict[str, Any]:
    order_id = await env.buy(BUYER)
    await env.pay(order_id)
    await env.delivered_message(BUYER, order_id)
    return next(k for k in await env.orc.keys() if not k["deleted"])


async def _enter_chat(env: Env) -> None:
    await env.tg.send_text(BUYER, "/chat")
    await env.tg.wait_for_text(BUYER, "Chat with anthropic/claude-3-sonnet")


def _completions(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in requests if r["path"] == "/api/v1/chat/completions"]


async def _rows(env: Env) -> list[ChatMessage]:
    async with env.app.sessions() as session:
        query = select(ChatMessage).where(ChatMessage.user_id == BUYER).order_by(ChatMessage.id)
        return list((await session.execute(query)).scalars())


async def test_buyer_chats_sees_the_stream_and_pays_what_the_footers_say(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        menu = await env.tg.last_message(BUYER)
        assert menu is not None
        assert "💬 Chat" not in [b["text"] for row in menu["buttons"] for b in row]
        key = await _delivered(env)
        await env.tg.send_text(BUYER, "/start")
        await env.tg.wait_for(
            BUYER,
            lambda m: "💬 Chat" in [b["text"] for row in m["buttons"] for b in row],
        )
        await env.tg.press(BUYER, "💬 Chat")
        await env.tg.wait_for_text(BUYER, "Chat with anthropic/claude-3-sonnet")

        # The stream holds after 5 pieces: the buyer sees the half-written answer.
        await env.orc.set_chat(hold_after=5)
        await env.tg.send_text(BUYER, "long: 40")
        frame = await env.tg.wait_for_draft(BUYER, lambda f: "word5" in f["plain"])
        assert frame["can_stop"] and "word6" not in frame["plain"]
        await env.orc.release_chat()
        first = await env.tg.wait_for_text(BUYER, "This answer:")
        assert first["plain"].startswith("word1 word2") and "word40" in first["plain"]
        assert (await env.tg.drafts(BUYER))["current"] is None  # replaced by the message

        await env.orc.set_chat()
        await env.tg.send_text(BUYER, "And now?")
        second = await env.tg.wait_for(
            BUYER,
            lambda m: m["from_bot"] and "You said: And now?" in (m["plain"] or ""),
        )
        assert "This is turn 2 of our conversation." in second["plain"]

        footers = [FOOTER.search(m["plain"]) for m in (first, second)]
        assert all(footers)
        costs = [Decimal(f.group(1)) for f in footers if f]
        emulated = next(k for k in await env.orc.keys() if k["hash"] == key["hash"])
        assert emulated["usage"] == sum(costs) > 0
        left = Decimal(footers[1].group(2).replace(",", ""))  # type: ignore[union-attr]
        assert left == (emulated["limit"] - emulated["usage"]).quantize(Decimal("0.01"))

        # The second question carried the first turn; the key used was the buyer's.
        calls = _completions(await env.orc.requests())
        assert len(calls) == 2
        assert [m["role"] for m in calls[1]["body"]["messages"]] == [
            "user",
            "assistant",
            "user",
        ]
        assert calls[1]["body"]["stream"] is True
        rows = await _rows(env)
        assert [(r.role, r.cost) for r in rows] == [
            ("user", None),
            ("assistant", costs[0]),
            ("user", None),
            ("assistant", costs[1]),
        ]
        # /stats: answers, tokens and cost per model.
        await env.tg.send_text(ADMIN_ID, "/stats")
        stats = await env.tg.wait_for_text(ADMIN_ID, "Chat (answers")
        tokens = sum(r.tokens_prompt or 0 for r in rows) + sum(
            r.tokens_completion or 0 for r in rows
        )
        assert f"anthropic/claude-3-sonnet: 2 · {tokens:,} · ${sum(costs)}" in stats["plain"]
        # /metrics counts the same answers, tokens and cost.
        registry = env.app.metrics.registry
        model = {"model": "anthropic/claude-3-sonnet"}
        assert (
            registry.get_sample_value("aitoken_chat_answers_total", model | {"outcome": "done"})
            == 2
        )
        billed = [
            registry.get_sample_value("aitoken_chat_tokens_total", model | {"kind": kind})
            for kind in ("prompt", "completion")
        ]
        assert sum(v or 0 for v in billed) == tokens
        cost = registry.get_sample_value("aitoken_chat_cost_usd_total", model)
        assert cost == pytest.approx(float(sum(costs)))

        # The plaintext key reaches neither the conversation nor the answers.
        plaintext = emulated["key"]
        assert all(plaintext not in r.content for r in rows)
        assert plaintext not in first["plain"] + second["plain"]


async def test_used_up_credit_offers_more_tokens_never_a_raw_error(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        key = await _delivered(env)
        await _enter_chat(env)
        await env.tg.send_text(BUYER, "hello")
        await env.tg.wait_for_text(BUYER, "This answer:")
        # Someone else's tool spent the rest: the next question cannot be covered.
        emulated = next(k for k in await env.orc.keys() if k["hash"] == key["hash"])
        await env.orc.spend(key["hash"], emulated["limit"] - emulated["usage"] - Decimal("0.001"))
        await env.tg.send_text(BUYER, "still there?")
        refusal = await env.tg.wait_for_text(BUYER, "credit is used up")
        assert next(b["text"] for row in refusal["buttons"] for b in row) == "🤖 AI Tokens"
        assert "402" not in refusal["plain"] and "limit exceeded" not in refusal["plain"]
        await env.tg.press(BUYER, "🤖 AI Tokens")
        await env.tg.wait_for(
            BUYER, lambda m: "✏️ Custom amount" in [b["text"] for r in m["buttons"] for b in r]
        )
        assert [r.role for r in await _rows(env)] == ["user", "assistant"]


async def test_stop_keeps_the_partial_answer_and_its_cost(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        key = await _delivered(env)
        await _enter_chat(env)
        await env.orc.set_chat(hold_after=3)
        await env.tg.send_text(BUYER, "long: 100")
        await env.tg.wait_for_draft(BUYER, lambda f: "word3" in f["plain"])
        await env.tg.stop_generation(BUYER)
        kept = await env.tg.wait_for_text(BUYER, "Stopped")
        assert kept["plain"].startswith("word1 word2 word3") and "word4" not in kept["plain"]
        footer = FOOTER.search(kept["plain"])
        assert footer, kept["plain"]
        [generation] = await env.orc.generations()
        assert generation["finish_reason"] == "cancelled"
        assert Decimal(footer.group(1)) == generation["total_cost"]
        emulated = next(k for k in await env.orc.keys() if k["hash"] == key["hash"])
        assert emulated["usage"] == generation["total_cost"]
        rows = await _rows(env)
        assert rows[-1].content == "word1 word2 word3 "


async def test_two_quick_messages_run_one_request(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await _delivered(env)
        await _enter_chat(env)
        await env.orc.set_chat(hold_after=2)
        await env.tg.send_text(BUYER, "long: 10")
        await env.tg.wait_for_draft(BUYER, lambda f: "word2" in f["plain"])
        await env.tg.send_text(BUYER, "second question")
        await env.tg.wait_for_text(BUYER, "still answering your previous message")
        await env.orc.release_chat()
        await env.tg.wait_for_text(BUYER, "word10")
        assert len(_completions(await env.orc.requests())) == 1


async def test_markdown_with_html_characters_renders_safely(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await _delivered(env)
        await _enter_chat(env)
        await env.tg.send_text(BUYER, "echo: **Bold** and <b>not bold</b> & `x<y` in 1 < 2")
        answer = await env.tg.wait_for_text(BUYER, "This answer:")
        assert answer["plain"].startswith("Bold and <b>not bold</b> & x<y in 1 < 2")
        kinds = {
            (e["type"], answer["plain"][e["offset"] : e["offset"] + e["length"]])
            for e in answer["entities"]
        }
        assert ("bold", "Bold") in kinds and ("code", "x<y") in kinds
        assert not any(kind == "bold" and text == "not bold" for kind, text in kinds)


async def test_without_drafts_the_answer_is_edited_in_place(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await _delivered(env)
        await _enter_chat(env)
        await env.tg.set_drafts_supported(False)
        await env.orc.set_chat(hold_after=4)
        await env.tg.send_text(BUYER, "long: 12")
        partial = await env.tg.wait_for_text(BUYER, "word4")
        assert partial["plain"].endswith("▌")
        await env.orc.release_chat()
        final = await env.tg.wait_for_text(BUYER, "This answer:")
        assert final["message_id"] == partial["message_id"] and final["edited"] >= 1
        assert "word12" in final["plain"] and "▌" not in final["plain"]


async def test_long_answers_are_split_and_new_and_forget_reset_history(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await _delivered(env)
        await _enter_chat(env)
        await env.tg.send_text(BUYER, "long: 900")  # ≈ 6,900 characters
        await env.tg.wait_for_text(BUYER, "This answer:")
        parts = [m for m in await env.tg.messages(BUYER) if "word" in (m["plain"] or "")]
        assert len(parts) == 2 and all(len(m["plain"]) <= 4096 for m in parts)
        assert parts[1]["plain"].split()[0] == f"word{len(parts[0]['plain'].split()) + 1}"

        await env.tg.send_text(BUYER, "/new")
        await env.tg.wait_for_text(BUYER, "New conversation")
        await env.tg.send_text(BUYER, "fresh")
        await env.tg.wait_for_text(BUYER, "You said: fresh")
        last = _completions(await env.orc.requests())[-1]
        assert last["body"]["messages"] == [{"role": "user", "content": "fresh"}]

        await env.tg.send_text(BUYER, "/forget")
        await env.tg.wait_for_text(BUYER, "conversation is deleted")
        assert await _rows(env) == []


async def test_chat_switched_off_or_without_a_key(tmp_path: Path) -> None:
    async with running_env(tmp_path, chat_enabled=False) as env:
        await env.start_chat(BUYER)
        await env.tg.send_text(BUYER, "/chat")
        await env.tg.wait_for_text(BUYER, "switched off")
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.tg.send_text(BUYER, "/chat")
        await env.tg.wait_for_text(BUYER, "Buy AI tokens first")


async def test_a_model_that_takes_too_long_gets_a_clear_message(tmp_path: Path) -> None:
    async with running_env(tmp_path, chat_timeout_seconds=5) as env:
        await _delivered(env)
        await _enter_chat(env)
        await env.orc.set_chat(hold_after=2)  # the model stalls after two pieces
        await env.tg.send_text(BUYER, "long: 10")
        await env.tg.wait_for_text(BUYER, "took too long to answer", timeout=20)
        await env.orc.release_chat()
        # The buyer may ask again at once: nothing is left in flight.
        await env.orc.set_chat()
        await env.tg.send_text(BUYER, "echo: again")
        await env.tg.wait_for_text(BUYER, "again")
        texts = [m["plain"] or "" for m in await env.tg.messages(BUYER) if m["from_bot"]]
        assert not any("still answering" in t for t in texts)


async def test_too_many_messages_a_minute_are_refused_politely(tmp_path: Path) -> None:
    async with running_env(tmp_path, chat_rate_per_minute=1) as env:
        await _delivered(env)
        await _enter_chat(env)
        await env.tg.send_text(BUYER, "echo: first")
        await env.tg.wait_for_text(BUYER, "This answer:")
        await env.tg.send_text(BUYER, "echo: second")
        refused = await env.tg.wait_for_text(BUYER, "That's a lot of messages in a minute")
        assert re.search(r"Please wait \d+ seconds? and send again", refused["plain"]), refused
        assert len(_completions(await env.orc.requests())) == 1


async def test_a_photo_in_chat_mode_is_refused_politely(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await _delivered(env)
        await _enter_chat(env)
        await env.tg.send_photo(BUYER, caption="what is this?")
        await env.tg.wait_for_text(BUYER, "I can read text only")
        assert _completions(await env.orc.requests()) == []
