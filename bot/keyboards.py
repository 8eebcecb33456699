"""Inline keyboards. Labels come from the locale (as plain text: Telegram shows button
labels verbatim); data from core.callbacks."""

from __future__ import annotations

from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup
from aiogram.utils.keyboard import InlineKeyboardBuilder

from core.callbacks import (
    AssetCb,
    BroadcastCb,
    LangCb,
    MenuCb,
    ModelCb,
    OrderCb,
    PackageCb,
    QuoteCb,
    SettingsCb,
)
from core.money import format_usd
from locales import LANGUAGE_NAMES, LANGUAGES, Phrase, Translator
from services.preferences import Preference, Preferences
from services.pricing import ModelPrice, Package


def main_menu(t: Translator, *, chat: bool = False) -> InlineKeyboardMarkup:
    """``chat``: offer 💬 Chat (the buyer has a key with credit left)."""
    kb = InlineKeyboardBuilder()
    kb.button(text=t("menu.ai_tokens"), callback_data=MenuCb(action="tokens"))
    if chat:
        kb.button(text=t("menu.chat"), callback_data=MenuCb(action="chat"))
    kb.button(text=t("menu.quota"), callback_data=MenuCb(action="quota"))
    kb.button(text=t("menu.orders"), callback_data=MenuCb(action="orders"))
    kb.button(text=t("menu.language"), callback_data=MenuCb(action="lang"))
    kb.button(text=t("settings.button"), callback_data=MenuCb(action="settings"))
    kb.button(text=t("menu.help"), callback_data=MenuCb(action="help"))
    kb.adjust(2 if chat else 1, 2, 2, 1)
    return kb.as_markup()


def buy_more(t: Translator) -> InlineKeyboardMarkup:
    """Under "your credit is used up": straight to the packages."""
    kb = InlineKeyboardBuilder()
    kb.button(text=t("menu.ai_tokens"), callback_data=MenuCb(action="tokens"))
    kb.button(text=t("common.menu"), callback_data=MenuCb(action="home"))
    kb.adjust(1)
    return kb.as_markup()


def packages(t: Translator, model: ModelPrice, items: list[Package]) -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    for item in items:
        kb.button(
            text=t.plain(
                "buy.package_button",
                name=t.plain(f"package.{item.name}"),
                tokens=Phrase("unit.tokens", count=item.quote.tokens),
                price=format_usd(item.quote.total_usd),
            ),
            callback_data=PackageCb(tokens=item.quote.tokens),
        )
    kb.button(text=t("buy.custom_button"), callback_data=MenuCb(action="custom"))
    kb.button(
        text=t.plain("buy.model_button", name=model.name), callback_data=MenuCb(action="models")
    )
    kb.button(text=t("common.back"), callback_data=MenuCb(action="home"))
    kb.adjust(1)
    return kb.as_markup()


def models(
    t: Translator, offered: list[ModelPrice], all_ids: list[str], current: str
) -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    for model in offered:
        mark = "✅ " if model.id == current else ""
        kb.button(text=f"{mark}{model.name}", callback_data=ModelCb(index=all_ids.index(model.id)))
    kb.button(text=t("common.back"), callback_data=MenuCb(action="tokens"))
    kb.adjust(1)
    return kb.as_markup()


def assets(t: Translator, tokens: int, offered: list[str]) -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    for asset in offered:
        kb.button(text=asset, callback_data=AssetCb(tokens=tokens, asset=asset))
    kb.button(text=t("common.back"), callback_data=MenuCb(action="tokens"))
    # Up to three assets a row (six fit a phone's width badly), then Back.
    rows = [3] * (len(offered) // 3) + ([len(offered) % 3] if len(offered) % 3 else [])
    kb.adjust(*(rows or [1]), 1)
    return kb.as_markup()


def quote(t: Translator, quote_id: int) -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    kb.button(text=t("quote.confirm"), callback_data=QuoteCb(action="ok", quote_id=quote_id))
    kb.button(text=t("quote.cancel"), callback_data=QuoteCb(action="no", quote_id=quote_id))
    kb.adjust(2)
    return kb.as_markup()


def payment(
    t: Translator, order_id: int, *, pay_url: str | None = None, total: str = ""
) -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    if pay_url is not None:
        # The provider's checkout (Crypto Pay opens @CryptoBot with the invoice).
        kb.button(text=t.plain("pay.open", total=total), url=pay_url)
    kb.button(text=t("pay.check"), callback_data=OrderCb(action="check", order_id=order_id))
    kb.button(text=t("pay.cancel"), callback_data=OrderCb(action="cancel", order_id=order_id))
    kb.adjust(1)
    return kb.as_markup()


def single_button(text: str, callback_data: str) -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    kb.button(text=text, callback_data=callback_data)
    return kb.as_markup()


def languages(t: Translator) -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    # Each language by its own name: a buyer who can't read the current one finds theirs.
    for code in LANGUAGES:
        kb.button(text=LANGUAGE_NAMES[code], callback_data=LangCb(code=code))
    kb.adjust(2)
    return kb.as_markup()


def back_to_menu(t: Translator) -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    kb.button(text=t("common.menu"), callback_data=MenuCb(action="home"))
    return kb.as_markup()


def settings(t: Translator, prefs: Preferences) -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    for preference in Preference:
        mark = t.plain("settings.on" if prefs.enabled(preference) else "settings.off")
        kb.button(
            text=t.plain(f"settings.{preference.value}", mark=mark),
            callback_data=SettingsCb(toggle=preference.value),
        )
    kb.button(text=t("common.menu"), callback_data=MenuCb(action="home"))
    kb.adjust(1)
    return kb.as_markup()


def broadcast_confirm(t: Translator, broadcast_id: int, recipients: int) -> InlineKeyboardMarkup:
    """Under an admin's broadcast preview: send to ``recipients`` buyers, or cancel."""
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(
                    text=t("broadcast.send_button", count=recipients),
                    callback_data=BroadcastCb(action="send", broadcast_id=broadcast_id).pack(),
                ),
                InlineKeyboardButton(
                    text=t("broadcast.cancel_button"),
                    callback_data=BroadcastCb(action="cancel", broadcast_id=broadcast_id).pack(),
                ),
            ]
        ]
    )
