"""The conversation of SPEC §5 beyond the happy path: menus, language, models, orders, quota."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from pathlib import Path

import pytest

from db.models import User
from sandbox.runner import BOT_TOKEN, MANAGEMENT_KEY
from tests.harness import Env, running_env

BUYER = 717171


def _labels(message: dict) -> list[str]:
    return [b["text"] for row in message.get("buttons") or [] for b in row]


async def test_main_menu_labels_and_help(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        menu = await env.tg.last_message(BUYER)
        assert menu is not None
        assert _labels(menu) == [
            "🤖 AI Tokens",
            "📊 Quota",
            "📦 My orders",
            "🌐 Language",
            "⚙️ Settings",
            "❓ Help",
        ]
        await env.tg.press(BUYER, "❓ Help")
        await env.tg.wait_for_text(BUYER, "How it works")
        await env.tg.send_text(BUYER, "/help")
        await env.tg.wait_for_text(BUYER, "/buy — buy tokens")


async def test_russian_from_language_code_and_lang_switch(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.tg.send_text(BUYER, "/start", language_code="ru")
        menu = await env.tg.wait_for(BUYER, lambda m: m["from_bot"] and bool(m["buttons"]))
        assert "🤖 AI-токены" in _labels(menu)
        await env.tg.send_text(BUYER, "/lang")
        await env.tg.wait_for(BUYER, lambda m: "English" in _labels(m))
        await env.tg.press(BUYER, "English")
        await env.tg.wait_for_text(BUYER, "Language set to English")
        await env.tg.send_text(BUYER, "/start", language_code="ru")  # the choice sticks
        await env.tg.wait_for(
            BUYER, lambda m: "Hi," in (m["plain"] or "") and "🤖 AI Tokens" in _labels(m)
        )


async def test_choosing_another_model_reprices_the_packages(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.open_packages(BUYER)
        await env.tg.press(BUYER, "🧠 Model:", match="prefix")
        models = await env.tg.wait_for(BUYER, lambda m: "OpenAI: GPT-4o-mini" in _labels(m))
        assert "✅ Anthropic: Claude 3 Sonnet" in _labels(models)
        await env.tg.press(BUYER, "OpenAI: GPT-4o-mini")
        # completion $0.60 per million: $2 buys 2,700,000 tokens ($1.95).
        await env.tg.wait_for(BUYER, lambda m: "Starter · 2,700,000 tokens · $1.95" in _labels(m))
        await env.choose_package(BUYER, "Starter")
        order_id = await env.quote_and_confirm(BUYER, "USDT")
        order = await env.order(order_id)
        assert order.model == "openai/gpt-4o-mini" and order.base_usd == Decimal("1.62")


async def test_cancel_leaves_the_custom_amount_step(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.open_packages(BUYER)
        await env.tg.press(BUYER, "✏️ Custom amount")
        await env.tg.wait_for_text(BUYER, "How many tokens?")
        await env.tg.send_text(BUYER, "/cancel")
        await env.tg.wait_for_text(BUYER, "Cancelled")
        sent = await env.tg.send_text(BUYER, "250000")  # no longer an amount
        answer = await env.tg.wait_for(
            BUYER, lambda m: m["from_bot"] and m["message_id"] > sent["message_id"]
        )
        assert "didn't understand" in answer["plain"]


async def test_orders_and_quota_screens(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.tg.press(BUYER, "📊 Quota")
        await env.tg.wait_for_text(BUYER, "don't have an API key yet")
        await env.tg.send_text(BUYER, "/orders")
        await env.tg.wait_for_text(BUYER, "no orders yet")

        order_id = await env.buy(BUYER)
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        key = next(k for k in await env.orc.keys() if not k["deleted"])
        await env.orc.spend(key["hash"], Decimal("0.33"))
        await env.tg.send_text(BUYER, "/quota")
        quota = await env.tg.wait_for_text(BUYER, "Your quota")
        # Read from OpenRouter itself: limit 1.65, used 0.33, remaining 1.32 (= 88,000 tokens).
        for fragment in (
            "Limit: $1.65",
            "Used: $0.33",
            "Remaining: $1.32",
            "≈ 88,000 tokens",
            "▓▓░░░░░░░░ 20% used",
        ):
            assert fragment in quota["plain"], quota["plain"]
        await env.tg.send_text(BUYER, "/orders")
        orders = await env.tg.wait_for_text(BUYER, "Your orders")
        assert f"#{order_id} · 110,000 tokens" in orders["plain"] and "delivered" in orders["plain"]


async def test_blocked_buyer_is_marked_unreachable_and_not_retried(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.tg.block(BUYER)
        await env.pay(order_id)
        await env.wait_status(order_id, "delivered")
        await env.tg.wait_for_text(env.admin_chat, f"Paid: order #{order_id}")
        # The key message may be queued after the first 403 dropped what was pending; it is
        # sent, refused and dropped in turn, which takes a moment on a loaded machine.
        for _ in range(200):
            rows = [r for r in await env.outbox() if r.chat_id == BUYER]
            if rows and all(r.status != "pending" for r in rows):
                break
            await asyncio.sleep(0.05)
        assert {r.status for r in rows} == {"dropped"}
        async with env.app.sessions() as session:
            user = await session.get(User, BUYER)
            assert user is not None and user.reachable is False


async def test_rate_limit_pauses_sending_then_delivers(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.tg.add_fault(
            path=f"/bot{BOT_TOKEN}/sendMessage",
            status=429,
            count=1,
            body={
                "ok": False,
                "error_code": 429,
                "description": "Too Many Requests: retry after 1",
                "parameters": {"retry_after": 1},
            },
        )
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        events = [e for e in await env.tg.events() if e["method"].lower() == "sendmessage"]
        limited = next(e for e in events if e.get("error_code") == 429)
        after = [e for e in events if e["seq"] > limited["seq"]]
        assert after and after[0]["at"] - limited["at"] >= 0.9  # waited retry_after
        texts = [m["plain"] for m in await env.tg.messages(BUYER) if m["from_bot"]]
        assert sum("Payment received" in (t or "") for t in texts) == 1


async def test_no_secret_reaches_the_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        key = next(k for k in await env.orc.keys() if not k["deleted"])["key"]
        secrets = {
            "api key": key,
            "management key": MANAGEMENT_KEY,
            "callback secret": env.sandbox.callback_secret,
            "bot token": BOT_TOKEN,
            "encryption key": env.app.settings.encryption_key.get_secret_value(),
        }
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert len(caplog.records) > 20  # the purchase was logged
    for name, secret in secrets.items():
        assert secret not in text, f"{name} appears in the logs"


async def test_configured_model_missing_at_openrouter_is_not_offered_and_admin_told(
    tmp_path: Path,
) -> None:
    models = ["anthropic/claude-3-sonnet", "vendor/retired-model", "openrouter/auto"]
    async with running_env(tmp_path, models=models) as env:
        alert = await env.tg.wait_for_text(env.admin_chat, "vendor/retired-model")
        assert "not listed" in alert["plain"]
        # A router with a variable price ("-1") is not sold either.
        await env.tg.wait_for_text(env.admin_chat, "openrouter/auto")
        await env.start_chat(BUYER)
        await env.open_packages(BUYER)
        await env.tg.press(BUYER, "🧠 Model:", match="prefix")
        listing = await env.tg.wait_for(
            BUYER,
            lambda m: any(label.startswith("✅") for label in _labels(m)),
        )
        assert [label for label in _labels(listing) if label != "⬅️ Back"] == [
            "✅ Anthropic: Claude 3 Sonnet"
        ]


async def _wait_reachable(env: Env, user_id: int, expected: bool) -> None:
    for _ in range(100):
        async with env.app.sessions() as session:
            user = await session.get(User, user_id)
        if user is not None and user.reachable is expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"user {user_id} is not reachable={expected}")


async def test_buyer_who_blocks_the_bot_is_unreachable_until_they_unblock(
    tmp_path: Path,
) -> None:
    """Telegram says so with my_chat_member (kicked / member); the update that says the
    buyer blocked the bot must not itself count as the buyer being back."""
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.tg.block(BUYER)
        await _wait_reachable(env, BUYER, False)
        await asyncio.sleep(0.3)  # nothing flips it back behind the handler's back
        await _wait_reachable(env, BUYER, False)
        await env.tg.block(BUYER, blocked=False)
        await _wait_reachable(env, BUYER, True)
        # Blocked again, then back by writing: Telegram announces the unblock first.
        await env.tg.block(BUYER)
        await _wait_reachable(env, BUYER, False)
        await env.start_chat(BUYER)
        await _wait_reachable(env, BUYER, True)
        state = await env.tg.state()
        assert "my_chat_member" in (state["allowed_updates"] or [])
