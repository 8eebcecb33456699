"""Writes localised user and admin messages to the outbox, inside the caller's transaction.

No Telegram types here: a message is text plus optional button rows (label key, data).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from db import repo
from locales import translator
from services.admin_chat import AdminChat
from services.admin_topics import ALERT_CATEGORIES, AlertCategory

log = logging.getLogger(__name__)

# The key is never written to the outbox: the sender puts it in at send time.
API_KEY_SLOT = "\u27e6API_KEY\u27e7"


class Notifier:
    def __init__(
        self,
        admin_chat: AdminChat,
        admin_language: str = "en",
        *,
        order_button: Callable[[int], str] | None = None,
        recheck_button: str | None = None,
        topics: Mapping[AlertCategory, int] | None = None,
    ) -> None:
        self.admin_chat = admin_chat
        # The admin group's forum topic per alert category (ADMIN_TOPIC_*).
        self.topics = dict(topics or {})
        self.admin_language = admin_language
        # Callback data of the admins' "🔎 Order #N" button (packed by the bot layer).
        self.order_button = order_button
        # Callback data of the admins' "🔄 Re-check balance" button under funds alerts.
        self.recheck_button = recheck_button

    @property
    def admin_chat_id(self) -> int | None:
        return self.admin_chat.id

    async def user(
        self,
        session: AsyncSession,
        user_id: int,
        key: str,
        *,
        dedupe: str | None,
        payload: dict[str, Any] | None = None,
        buttons: list[list[tuple[str, str]]] | None = None,
        language: str | None = None,
        **params: Any,
    ) -> None:
        """Queue ``key`` for the buyer in their language; ``buttons`` are rows of
        (label key, callback data). ``language``: the caller already read it (saves a
        query per message in bulk jobs)."""
        t = translator(language or await repo.user_language(session, user_id))
        payload = dict(payload or {})
        if buttons:
            payload["buttons"] = [
                [{"text": t.plain(label), "callback_data": data} for label, data in row]
                for row in buttons
            ]
        await repo.add_outbox(
            session,
            chat_id=user_id,
            text=t(key, **params),
            dedupe_key=dedupe,
            payload=payload or None,
        )

    async def admin(
        self,
        session: AsyncSession,
        key: str,
        *,
        dedupe: str | None,
        recheck: bool = False,
        **params: Any,
    ) -> None:
        """Queue an alert for the admin group; one about an order gets a one-tap button
        that opens the order's status and timeline, one about missing funds (``recheck``)
        a button that re-measures the balance and resumes waiting orders."""
        admin_chat_id = self.admin_chat_id
        if admin_chat_id is None:
            return
        t = translator(self.admin_language)
        row: list[dict[str, str]] = []
        order_id = params.get("order_id")
        if self.order_button is not None and isinstance(order_id, int):
            label = t.plain("admin.open_order", order_id=order_id)
            row.append({"text": label, "callback_data": self.order_button(order_id)})
        if recheck and self.recheck_button is not None:
            label = t.plain("admin.recheck_funds")
            row.append({"text": label, "callback_data": self.recheck_button})
        category = ALERT_CATEGORIES.get(key)
        if category is None:
            # Still sent (to the group itself): a missing table entry must not lose it.
            log.warning("admin_alert_uncategorised key=%s", key)
        await self._to_admins(
            session,
            admin_chat_id,
            t(key, **params),
            dedupe=dedupe,
            category=category,
            buttons=[row] if row else None,
        )

    async def admin_text(
        self, session: AsyncSession, text: str, *, dedupe: str | None, category: AlertCategory
    ) -> bool:
        """Queue an already rendered text (a report) for the admin group; False when
        there is no admin group."""
        admin_chat_id = self.admin_chat_id
        if admin_chat_id is None:
            return False
        await self._to_admins(session, admin_chat_id, text, dedupe=dedupe, category=category)
        return True

    async def _to_admins(
        self,
        session: AsyncSession,
        chat_id: int,
        text: str,
        *,
        dedupe: str | None,
        category: AlertCategory | None,
        buttons: list[list[dict[str, str]]] | None = None,
    ) -> None:
        payload: dict[str, Any] = {}
        if buttons:
            payload["buttons"] = buttons
        thread = self.topics.get(category) if category is not None else None
        if thread is not None:
            # Carried by the row: the sender posts into this topic (or, if it is gone,
            # into the group itself, see processing/outbox/delivery.py).
            payload["message_thread_id"] = thread
        await repo.add_outbox(
            session,
            chat_id=chat_id,
            text=text,
            dedupe_key=dedupe,
            payload=payload or None,
            category=category.value if category is not None else None,
        )
