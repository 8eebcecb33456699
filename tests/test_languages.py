"""Languages end to end: a Ukrainian buyer's purchase, /quota, /orders and /help in
Ukrainian with Ukrainian numbers and plurals while the admins read Russian
(ADMIN_LANGUAGE); the same purchase and screens in each of the eight languages; /lang
lists every offered language by its own name; the web chat sandbox offers every one."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from core.money import format_crypto, format_usd
from db.models import User
from locales import LANGUAGE_NAMES, LANGUAGES, Phrase, catalog, translator
from sandbox.runner import ADMIN_ID
from sandbox.webchat import BUYERS, WebChat
from tests.harness import running_env

BUYER = 737373
NBSP = "\u00a0"


def _labels(message: dict[str, Any]) -> list[str]:
    return [b["text"] for row in message.get("buttons") or [] for b in row]


async def test_ukrainian_buyer_buys_and_reads_quota_orders_help_admins_read_russian(
    tmp_path: Path,
) -> None:
    async with running_env(tmp_path, admin_language="ru") as env:
        await env.tg.send_text(BUYER, "/start", language_code="uk-UA")
        menu = await env.tg.wait_for(BUYER, lambda m: "🤖 AI-токени" in _labels(m))
        assert "Привіт" in menu["plain"]

        await env.tg.press(BUYER, "🤖 AI-токени")
        packages = await env.tg.wait_for(BUYER, lambda m: "✏️ Своя кількість" in _labels(m))
        # SPEC §5's "Starter · 110,000 tokens · $1.98", in Ukrainian numbers and plurals.
        starter = f"Старт · 110{NBSP}000 токенів · 1,98{NBSP}$"
        assert starter in _labels(packages), _labels(packages)

        await env.tg.press(BUYER, starter)
        currency = await env.tg.wait_for(BUYER, lambda m: "USDT" in _labels(m))
        assert f"💱 110{NBSP}000 токенів." in currency["plain"]
        await env.tg.press(BUYER, "USDT")
        await env.tg.wait_for(BUYER, lambda m: "✅ Підтвердити замовлення" in _labels(m))
        await env.tg.press(BUYER, "✅ Підтвердити замовлення")
        invoice = await env.tg.wait_for(
            BUYER, lambda m: bool(m.get("photo")) and "🔄 Перевірити оплату" in _labels(m)
        )
        match = re.search(r"Замовлення #(\d+)", invoice["caption"] or "")
        assert match, invoice
        order_id = int(match.group(1))
        order = await env.order(order_id)
        assert order.crypto_amount is not None
        # The amount is copy-pasteable in every language: "." and no grouping.
        amount = format_crypto(order.crypto_amount, "USDT")
        assert f"Надішліть рівно {amount} USDT" in invoice["plain"]
        assert "1,98" in invoice["plain"] and "UTC" in invoice["plain"]

        await env.pay(order_id)
        delivered = await env.tg.wait_for_text(BUYER, f"Замовлення #{order_id} виконано")
        assert f"110{NBSP}000 токенів для {order.model}" in delivered["plain"]
        # The admins read ADMIN_LANGUAGE, whatever the buyer speaks.
        paid = await env.tg.wait_for_text(env.admin_chat, f"Оплачен заказ #{order_id}")
        assert f"110{NBSP}000 токенов для {order.model}" in paid["plain"]

        await env.tg.send_text(BUYER, "/quota", language_code="uk-UA")
        quota = await env.tg.wait_for_text(BUYER, "Ваша квота")
        assert re.search(r"Ліміт: \d+,\d\d\u00a0\$", quota["plain"]), quota["plain"]
        await env.tg.send_text(BUYER, "/orders", language_code="uk-UA")
        orders = await env.tg.wait_for_text(BUYER, "Ваші замовлення")
        line = f"#{order_id} · 110{NBSP}000 токенів · {order.model} · 1,98{NBSP}$"
        assert line in orders["plain"]
        await env.tg.send_text(BUYER, "/help", language_code="uk-UA")
        await env.tg.wait_for_text(BUYER, "Як це працює")

        # An admin whose own Telegram speaks English still gets ADMIN_LANGUAGE.
        await env.tg.send_text(ADMIN_ID, "/stats", chat_id=env.admin_chat, language_code="en")
        stats = await env.tg.wait_for_text(env.admin_chat, "Статистика")
        assert "Заказов создано: 1" in stats["plain"]


async def test_lang_lists_every_offered_language_by_its_own_name(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.tg.send_text(BUYER, "/lang")
        screen = await env.tg.wait_for(BUYER, lambda m: "Русский" in _labels(m))
        assert _labels(screen) == [LANGUAGE_NAMES[code] for code in LANGUAGES]
        assert "Українська" in _labels(screen)
        await env.tg.press(BUYER, "Українська")
        await env.tg.wait_for_text(BUYER, "✅ Мову змінено на українську.")
        async with env.app.sessions() as session:
            user = await session.scalar(select(User).where(User.id == BUYER))
        assert user is not None and user.language == "uk"
        # The choice sticks, whatever the Telegram app says.
        await env.tg.send_text(BUYER, "/start", language_code="en")
        await env.tg.wait_for(BUYER, lambda m: "🤖 AI-токени" in _labels(m))


async def test_web_chat_offers_every_offered_language(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        webchat = WebChat(env.sandbox, env.app, port=0)
        url = await webchat.start()
        buyer = next(iter(BUYERS))
        try:
            async with httpx.AsyncClient(base_url=url) as client:
                config = (await client.get("/api/config", params={"buyer": buyer})).json()
                assert config["languages"] == [
                    {"code": code, "name": LANGUAGE_NAMES[code]} for code in LANGUAGES
                ]
                for code in LANGUAGES:
                    answer = await client.post(
                        "/api/language", json={"buyer": buyer, "language": code}
                    )
                    assert answer.status_code == 200, answer.text
                refused = await client.post(
                    "/api/language", json={"buyer": buyer, "language": "xx"}
                )
                assert refused.status_code == 400
                await client.post("/api/language", json={"buyer": buyer, "language": "uk"})
                await client.post("/api/send", json={"buyer": buyer, "text": "/start"})
            await env.tg.wait_for(buyer, lambda m: "🤖 AI-токени" in _labels(m))
        finally:
            await webchat.stop()


# Telegram's language_code as a buyer's app of each language sends it.
TELEGRAM_CODES = {
    "en": "en",
    "ru": "ru-RU",
    "uk": "uk-UA",
    "es": "es-MX",
    "pt-BR": "pt-br",
    "tr": "tr",
    "zh-Hans": "zh-hans",
    "fa": "fa",
}


def _heading(language: str, key: str) -> str:
    """The first line of a catalogue text as the buyer reads it (tags stripped)."""
    entry = catalog(language)[key]
    assert isinstance(entry, str)
    return re.sub(r"<[^>]+>", "", entry.split("\n")[0]).split("{")[0].strip()


@pytest.mark.parametrize("language", LANGUAGES)
async def test_every_language_buys_and_reads_quota_orders_help(
    tmp_path: Path, language: str
) -> None:
    """Issue 15's "done when": a purchase, /quota, /orders and /help in each language,
    labels, numbers and money in that language, every message valid Telegram HTML (the
    emulator refuses anything else)."""
    assert set(TELEGRAM_CODES) == set(LANGUAGES)
    code = TELEGRAM_CODES[language]
    t = translator(language)
    async with running_env(tmp_path) as env:
        await env.tg.send_text(BUYER, "/start", language_code=code)
        await env.tg.wait_for(BUYER, lambda m: t.plain("menu.ai_tokens") in _labels(m))
        await env.tg.press(BUYER, t.plain("menu.ai_tokens"))
        starter = t.plain(
            "buy.package_button",
            name=t.plain("package.starter"),
            tokens=Phrase("unit.tokens", count=110_000),
            price=format_usd(Decimal("1.98")),
        )
        packages = await env.tg.wait_for(BUYER, lambda m: starter in _labels(m))
        assert t.number(110_000) in starter and t.usd(Decimal("1.98")) in starter
        assert t.plain("buy.custom_button") in _labels(packages)
        await env.tg.press(BUYER, starter)
        await env.tg.wait_for(BUYER, lambda m: "USDT" in _labels(m))
        await env.tg.press(BUYER, "USDT")
        await env.tg.wait_for(BUYER, lambda m: t.plain("quote.confirm") in _labels(m))
        await env.tg.press(BUYER, t.plain("quote.confirm"))
        invoice = await env.tg.wait_for(
            BUYER, lambda m: bool(m.get("photo")) and t.plain("pay.check") in _labels(m)
        )
        (order,) = await env.orders()
        assert order.crypto_amount is not None
        # The amount to paste into a wallet is the same in every language.
        assert f"{format_crypto(order.crypto_amount, 'USDT')}" in invoice["plain"]
        assert t.usd(order.total_usd) in invoice["plain"]

        await env.pay(order.id)
        delivered = await env.tg.wait_for(
            BUYER,
            lambda m: (
                f"{order.id}" in (m["plain"] or "") and "openrouter.ai/api/v1" in (m["plain"] or "")
            ),
        )
        assert t.number(110_000) in delivered["plain"] and order.model in delivered["plain"]
        assert (await env.order(order.id)).status == "delivered"

        await env.tg.send_text(BUYER, "/quota", language_code=code)
        quota = await env.tg.wait_for_text(BUYER, _heading(language, "quota.text"))
        assert t.usd(order.base_usd) in quota["plain"], quota["plain"]
        await env.tg.send_text(BUYER, "/orders", language_code=code)
        orders = await env.tg.wait_for_text(BUYER, _heading(language, "orders.title"))
        assert str(order.id) in orders["plain"] and t.usd(order.total_usd) in orders["plain"]
        await env.tg.send_text(BUYER, "/help", language_code=code)
        await env.tg.wait_for_text(BUYER, _heading(language, "help.text"))
