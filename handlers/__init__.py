"""All routers, in the order they must see updates."""

from __future__ import annotations

from aiogram import Router

from handlers import (
    admin,
    broadcast,
    buy,
    chat,
    common,
    errors,
    language,
    membership,
    menu,
    orders,
    quota,
    settings,
)


def routers() -> list[Router]:
    """Fresh routers for one dispatcher. ``common`` (with /cancel) comes before the buy
    flow so it can leave any step; the fallback comes last."""
    specs = [
        errors.router,
        membership.router,
        common.router,
        menu.router,
        buy.router,
        orders.router,
        quota.router,
        language.router,
        settings.router,
        admin.router,
        broadcast.router,
        chat.router,
        common.fallback,
    ]
    return [spec.build() for spec in specs]
