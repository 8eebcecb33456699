"""Callback data factories. They carry ids only; handlers check every id belongs to the user.

Callback data comes from the client and can be forged: numbers are bounded to what the
database can hold, so a forged 30-digit id fails to unpack, the filter does not match,
and the press gets the fallback's polite "no longer valid" instead of a database error.
"""

from __future__ import annotations

from typing import Annotated

from aiogram.filters.callback_data import CallbackData
from pydantic import Field

from core.limits import MAX_BIGINT, MAX_ROW_ID

RowId = Annotated[int, Field(ge=1, le=MAX_ROW_ID)]
TokenCount = Annotated[int, Field(ge=1, le=MAX_BIGINT)]


class MenuCb(CallbackData, prefix="m"):
    action: str  # home | tokens | chat | custom | models | quota | orders | lang | settings | help


class ModelCb(CallbackData, prefix="mo"):
    index: int  # position in the operator's model list, re-validated on press


class PackageCb(CallbackData, prefix="p"):
    tokens: TokenCount


class AssetCb(CallbackData, prefix="a"):
    tokens: TokenCount
    asset: str


class QuoteCb(CallbackData, prefix="q"):
    action: str  # ok | no
    quote_id: RowId


class OrderCb(CallbackData, prefix="o"):
    action: str  # check | cancel
    order_id: RowId


class PayerRefundCb(CallbackData, prefix="pr"):
    """Admin-only `💸 Refund to buyer` under a /refund answer."""

    order_id: RowId


class LangCb(CallbackData, prefix="l"):
    code: str


class SettingsCb(CallbackData, prefix="st"):
    toggle: str  # a Preference value, validated by the filter in handlers/settings.py


class AdminOrderCb(CallbackData, prefix="ao"):
    """The "🔎 Order #N" button under admin alerts."""

    order_id: RowId


class AttentionCb(CallbackData, prefix="at"):
    """`✔️ Mark settled` under /order of an order flagged for the operator (admins only)."""

    order_id: RowId


class BroadcastCb(CallbackData, prefix="bc"):
    action: str  # send | cancel
    broadcast_id: RowId


class AdminFundsCb(CallbackData, prefix="af"):
    """`🔄 Re-check balance` under funds alerts; admins only (handlers/admin.py)."""

    action: str  # recheck
