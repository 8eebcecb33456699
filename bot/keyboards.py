"""Inline keyboards. Labels come from the locale (as plain text: Telegram shows button
labels verbatim); data from core.callbacks."""

from __future__ import annotations

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

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


def _button(text: str, data: CallbackData | str) -> InlineKeyboardButton:
    return InlineKeyboardButton(
        text=text, callback_data=data.pack() if isinstance(data, CallbackData) else data
    )


def _rows(buttons: list[InlineKeyboardButton], *sizes: int) -> InlineKeyboardMarkup:
    """``buttons`` in rows of ``sizes``, the last size repeating for the rest: the layout
    of aiogram's ``InlineKeyboardBuilder.adjust``, without the builder, whose
    ``as_markup`` deep-copies every button (a 6-button menu took 0.47 ms this way, 0.08 ms
    built directly, on every update that shows one)."""
    rows: list[list[InlineKeyboardButton]] = []
    size = iter(sizes)
    width = next(size)
    rest = buttons
    while rest:
        rows.append(rest[:width])
        rest = rest[width:]
        width = next(size, width)
    return InlineKeyboardMarkup(inline_keyboard=rows)


def main_menu(t: Translator, *, chat: bool = False) -> InlineKeyboardMarkup:
    """``chat``: offer 💬 Chat (the buyer has a key with credit left)."""
    buttons = [_button(t("menu.ai_tokens"), MenuCb(action="tokens"))]
    if chat:
        buttons.append(_button(t("menu.chat"), MenuCb(action="chat")))
    buttons += [
        _button(t("menu.quota"), MenuCb(action="quota")),
        _button(t("menu.orders"), MenuCb(action="orders")),
        _button(t("menu.language"), MenuCb(action="lang")),
        _button(t("settings.button"), MenuCb(action="settings")),
        _button(t("menu.help"), MenuCb(action="help")),
    ]
    return _rows(buttons, 2 if chat else 1, 2, 2, 1)


def buy_more(t: Translator) -> InlineKeyboardMarkup:
    """Under "your credit is used up": straight to the packages."""
    return _rows(
        [
            _button(t("menu.ai_tokens"), MenuCb(action="tokens")),
            _button(t("common.menu"), MenuCb(action="home")),
        ],
        1,
    )


def packages(t: Translator, model: ModelPrice, items: list[Package]) -> InlineKeyboardMarkup:
    buttons = [
        _button(
            t.plain(
                "buy.package_button",
                name=t.plain(f"package.{item.name}"),
                tokens=Phrase("unit.tokens", count=item.quote.tokens),
                price=format_usd(item.quote.total_usd),
            ),
            PackageCb(tokens=item.quote.tokens),
        )
        for item in items
    ]
    buttons += [
        _button(t("buy.custom_button"), MenuCb(action="custom")),
        _button(t.plain("buy.model_button", name=model.name), MenuCb(action="models")),
        _button(t("common.back"), MenuCb(action="home")),
    ]
    return _rows(buttons, 1)


def models(
    t: Translator, offered: list[ModelPrice], all_ids: list[str], current: str
) -> InlineKeyboardMarkup:
    buttons = [
        _button(
            f"{'✅ ' if model.id == current else ''}{model.name}",
            ModelCb(index=all_ids.index(model.id)),
        )
        for model in offered
    ]
    buttons.append(_button(t("common.back"), MenuCb(action="tokens")))
    return _rows(buttons, 1)


def assets(t: Translator, tokens: int, offered: list[str]) -> InlineKeyboardMarkup:
    buttons = [_button(asset, AssetCb(tokens=tokens, asset=asset)) for asset in offered]
    buttons.append(_button(t("common.back"), MenuCb(action="tokens")))
    # Up to three assets a row (six fit a phone's width badly), then Back.
    rows = [3] * (len(offered) // 3) + ([len(offered) % 3] if len(offered) % 3 else [])
    return _rows(buttons, *(rows or [1]), 1)


def quote(t: Translator, quote_id: int) -> InlineKeyboardMarkup:
    return _rows(
        [
            _button(t("quote.confirm"), QuoteCb(action="ok", quote_id=quote_id)),
            _button(t("quote.cancel"), QuoteCb(action="no", quote_id=quote_id)),
        ],
        2,
    )


def payment(
    t: Translator, order_id: int, *, pay_url: str | None = None, total: str = ""
) -> InlineKeyboardMarkup:
    buttons = []
    if pay_url is not None:
        # The provider's checkout (Crypto Pay opens @CryptoBot with the invoice).
        buttons.append(InlineKeyboardButton(text=t.plain("pay.open", total=total), url=pay_url))
    buttons += [
        _button(t("pay.check"), OrderCb(action="check", order_id=order_id)),
        _button(t("pay.cancel"), OrderCb(action="cancel", order_id=order_id)),
    ]
    return _rows(buttons, 1)


def single_button(text: str, callback_data: str) -> InlineKeyboardMarkup:
    return _rows([_button(text, callback_data)], 1)


def languages(t: Translator) -> InlineKeyboardMarkup:
    # Each language by its own name: a buyer who can't read the current one finds theirs.
    return _rows([_button(LANGUAGE_NAMES[code], LangCb(code=code)) for code in LANGUAGES], 2)


def back_to_menu(t: Translator) -> InlineKeyboardMarkup:
    return _rows([_button(t("common.menu"), MenuCb(action="home"))], 1)


def settings(t: Translator, prefs: Preferences) -> InlineKeyboardMarkup:
    buttons = []
    for preference in Preference:
        mark = t.plain("settings.on" if prefs.enabled(preference) else "settings.off")
        buttons.append(
            _button(
                t.plain(f"settings.{preference.value}", mark=mark),
                SettingsCb(toggle=preference.value),
            )
        )
    buttons.append(_button(t("common.menu"), MenuCb(action="home")))
    return _rows(buttons, 1)


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
