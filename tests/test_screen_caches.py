"""What the buy flow keeps between updates to save CPU (issue 14 item 2) never shows a
stale screen: packages and bounds are kept per (rules, model price), so a repriced
model reaches the very next packages screen; keyboards built without aiogram's builder
have the builder's layout."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiogram.types import InlineKeyboardButton
from aiogram.utils.keyboard import InlineKeyboardBuilder

from bot.keyboards import _rows
from sandbox.openrouter_model import DEFAULT_MODELS
from services.pricing import AITokenService, ModelPrice, PricingRules
from tests.harness import running_env

BUYER = 5_200_001


def _labels(message: dict[str, Any]) -> list[str]:
    return [b["text"] for row in message.get("buttons") or [] for b in row]


async def test_a_repriced_model_reaches_the_next_packages_screen(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.open_packages(BUYER)
        # Claude 3 Sonnet, completion $15 per million: $2 buys 110,000 tokens ($1.98).
        await env.tg.wait_for(BUYER, lambda m: "Starter · 110,000 tokens · $1.98" in _labels(m))
        repriced = [
            {**m, "completion": "0.00003"} if m["id"] == "anthropic/claude-3-sonnet" else m
            for m in DEFAULT_MODELS
        ]
        await env.orc.set_models(repriced)
        await env.app.catalog.refresh()
        await env.tg.send_text(BUYER, "/buy")
        await env.tg.wait_for(BUYER, lambda m: "Starter · 55,000 tokens · $1.98" in _labels(m))


def test_packages_follow_the_rules_and_the_price() -> None:
    model = ModelPrice("v/m", "M", Decimal("0.000001"), Decimal("0.000015"))
    pricing = AITokenService(PricingRules())
    first = pricing.packages(model)
    assert pricing.packages(model) == first
    repriced = ModelPrice("v/m", "M", Decimal("0.000001"), Decimal("0.00003"))
    assert pricing.packages(repriced) != first
    assert pricing.packages(repriced) == AITokenService(PricingRules()).packages(repriced)
    pricing.rules = PricingRules(markup_percent=Decimal("50"))
    assert pricing.bounds(model) == AITokenService(pricing.rules).bounds(model)
    assert pricing.packages(model) != first
    pricing.packages(model).clear()  # a caller's list is its own
    assert pricing.packages(model)


@pytest.mark.parametrize(
    ("count", "sizes"), [(1, (1,)), (6, (1, 2, 2, 1)), (7, (2, 2, 2, 1)), (9, (2,)), (5, (3, 1))]
)
def test_rows_have_the_builders_layout(count: int, sizes: tuple[int, ...]) -> None:
    buttons = [InlineKeyboardButton(text=str(i), callback_data=str(i)) for i in range(count)]
    builder = InlineKeyboardBuilder()
    for button in buttons:
        builder.add(button)
    builder.adjust(*sizes)
    assert _rows(buttons, *sizes) == builder.as_markup()
