"""Callback data factories. They carry ids only; handlers check every id belongs to the user."""

from __future__ import annotations

from aiogram.filters.callback_data import CallbackData


class MenuCb(CallbackData, prefix="m"):
    action: str  # home | tokens | custom | models | quota | orders | lang | settings | help


class ModelCb(CallbackData, prefix="mo"):
    index: int  # position in the operator's model list, re-validated on press


class PackageCb(CallbackData, prefix="p"):
    tokens: int


class AssetCb(CallbackData, prefix="a"):
    tokens: int
    asset: str


class QuoteCb(CallbackData, prefix="q"):
    action: str  # ok | no
    quote_id: int


class OrderCb(CallbackData, prefix="o"):
    action: str  # check | cancel
    order_id: int


class LangCb(CallbackData, prefix="l"):
    code: str


class AdminFundsCb(CallbackData, prefix="af"):
    """`🔄 Re-check balance` under funds alerts; admins only (handlers/admin.py)."""

    action: str  # recheck
