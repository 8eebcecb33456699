"""Admin alerts go to the forum topic of their category (issue 13, item 7).

ADMIN_TOPIC_PAYMENTS / _FUNDS / _FAILURES / _SECURITY / _REPORTS name forum topics of the
admin group; each alert is sent there with ``message_thread_id``; unset, it goes to the
group itself. A topic someone deleted answers 400 "message thread not found" (Telegram's
wording): the alert is then delivered to the group itself, and the reason logged.
"""

from __future__ import annotations

import ast
import logging
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.models import OutboxMessage
from db.status import OutboxStatus
from locales import catalog, placeholders
from sandbox.runner import ADMIN_CHAT_ID, Sandbox
from sandbox.telegram_control import TelegramControl
from services.admin_topics import ALERT_CATEGORIES, AlertCategory
from tests.harness import Env, running_env

ROOT = Path(__file__).resolve().parent.parent
BUYER = 424242
TOPICS = {
    AlertCategory.PAYMENTS: 11,
    AlertCategory.FUNDS: 12,
    AlertCategory.FAILURES: 13,
    AlertCategory.SECURITY: 14,
    # REPORTS left unset: reports go to the group itself.
}


def _topic_settings(topics: dict[AlertCategory, int]) -> dict[str, int]:
    return {f"admin_topic_{category.value}": thread for category, thread in topics.items()}


async def _forum(sandbox: Sandbox, topics: dict[AlertCategory, int]) -> None:
    tg = TelegramControl(sandbox.telegram_url)
    try:
        await tg.register_chat(ADMIN_CHAT_ID, type="supergroup", title="Admins", is_forum=True)
        for category, thread in topics.items():
            assert await tg.create_topic(ADMIN_CHAT_ID, category.value, thread) == thread
    finally:
        await tg.aclose()


async def _queue_alert(env: Env, key: str, marker: str) -> None:
    """The alert ``key`` through the Notifier, every parameter set to ``marker``."""
    params: dict[str, Any] = dict.fromkeys(placeholders(catalog("en")[key]), marker)
    async with env.app.sessions() as session, session.begin():
        await env.app.notifier.admin(session, key, dedupe=f"topic-test:{key}", **params)
    env.app.outbox.wake()


async def test_each_alert_category_lands_in_its_topic_and_unset_in_the_group(
    tmp_path: Path,
) -> None:
    async def configure(sandbox: Sandbox) -> None:
        await _forum(sandbox, TOPICS)

    async with running_env(tmp_path, configure=configure, **_topic_settings(TOPICS)) as env:
        # A real purchase: the payment alert is in the payments topic.
        order_id = await env.buy(BUYER)
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        paid = await env.tg.wait_for_text(env.admin_chat, f"Paid: order #{order_id}")
        assert paid["message_thread_id"] == TOPICS[AlertCategory.PAYMENTS]

        # Every categorised alert kind, in its topic.
        for number, key in enumerate(sorted(ALERT_CATEGORIES)):
            await _queue_alert(env, key, f"mark{number}x")
        for number, key in enumerate(sorted(ALERT_CATEGORIES)):
            message = await env.tg.wait_for_text(env.admin_chat, f"mark{number}x")
            assert message["message_thread_id"] == TOPICS[ALERT_CATEGORIES[key]], key

        # The daily report: REPORTS is unset, so the group itself.
        assert await env.app.reports.daily_report(date.today())
        env.app.outbox.wake()
        report = await env.tg.wait_for_text(env.admin_chat, "Daily report")
        assert report["message_thread_id"] is None
        rows = await env.outbox()
        by_dedupe = {row.dedupe_key: row for row in rows}
        assert by_dedupe[f"admin-paid:{order_id}"].category == "payments"
        assert by_dedupe[f"daily-report:{date.today().isoformat()}"].category == "reports"


async def test_a_deleted_topic_falls_back_to_the_group_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topics = {AlertCategory.PAYMENTS: 21}

    async def configure(sandbox: Sandbox) -> None:
        await _forum(sandbox, topics)

    caplog.set_level(logging.WARNING, logger="processing.outbox")
    async with running_env(tmp_path, configure=configure, **_topic_settings(topics)) as env:
        await env.tg.delete_topic(ADMIN_CHAT_ID, 21)
        order_id = await env.buy(BUYER)
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        paid = await env.tg.wait_for_text(env.admin_chat, f"Paid: order #{order_id}")
        assert paid["message_thread_id"] is None  # the group itself

        # Telegram refused the topic once; the same alert then went to the group.
        sends = [
            e for e in await env.tg.events(chat_id=ADMIN_CHAT_ID) if e["method"] == "sendMessage"
        ]
        refused = [e for e in sends if not e["ok"]]
        assert [e["description"] for e in refused] == ["Bad Request: message thread not found"]
        async with env.app.sessions() as session:
            row = (
                await session.execute(
                    select(OutboxMessage).where(
                        OutboxMessage.dedupe_key == f"admin-paid:{order_id}"
                    )
                )
            ).scalar_one()
        assert row.status == OutboxStatus.SENT.value
        assert any(
            "admin_topic_missing" in r.getMessage() and "thread=21" in r.getMessage()
            for r in caplog.records
        )


def _admin_alert_keys() -> set[str]:
    """Every literal alert key passed to ``<notifier>.admin(session, key, …)`` in the code."""
    keys: set[str] = set()
    for folder in ("services", "processing", "handlers", "bot"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "admin"
                    and len(node.args) >= 2
                ):
                    key = node.args[1]
                    choices = [key.body, key.orelse] if isinstance(key, ast.IfExp) else [key]
                    for choice in choices:
                        if isinstance(choice, ast.Constant) and isinstance(choice.value, str):
                            keys.add(choice.value)
    return keys


def test_every_admin_alert_kind_has_a_category() -> None:
    found = _admin_alert_keys()
    assert "admin.paid" in found and "admin.callback_rejected" in found  # the scan works
    # f"admin.{situation}" in processing/payment_notices.py: its situations by name.
    found |= {"admin.paid_after_close", "admin.overpaid"}
    assert found <= ALERT_CATEGORIES.keys(), sorted(found - ALERT_CATEGORIES.keys())
    english = catalog("en")
    assert all(key in english for key in ALERT_CATEGORIES)
