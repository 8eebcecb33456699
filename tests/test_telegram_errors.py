"""Every Telegram error the outbox can meet ends somewhere defined, and the admin group is
followed when Telegram upgrades it to a supergroup (issue 10, item 4).

The error answers are injected into the Telegram emulator's sendMessage (Telegram's own
shapes, so aiogram raises the same classes as in production: see
``aiogram/client/session/base.py::check_response``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiogram.exceptions import (
    ClientDecodeError,
    RestartingTelegram,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from sqlalchemy import select

from db import repo
from db.models import OutboxMessage, RuntimeSetting
from sandbox.runner import ADMIN_ID, BOT_TOKEN, Sandbox
from services.admin_chat import AdminChat
from tests.harness import Env, running_env

OLD_GROUP = -4001
NEW_GROUP = -1004001
SEND = f"/bot{BOT_TOKEN}/sendMessage"


def _error(code: int, description: str, **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return body


async def _queue(env: Env, chat_id: int, text: str) -> int:
    async with env.app.sessions() as session, session.begin():
        await repo.add_outbox(session, chat_id=chat_id, text=text, dedupe_key=None)
    env.app.outbox.wake()
    async with env.app.sessions() as session:
        row = (
            await session.execute(select(OutboxMessage).where(OutboxMessage.text == text))
        ).scalar_one()
    return row.id


async def _row(env: Env, row_id: int) -> OutboxMessage:
    async with env.app.sessions() as session:
        row = await session.get(OutboxMessage, row_id)
        assert row is not None
        return row


async def _wait_row(env: Env, row_id: int, check: Any, timeout: float = 10.0) -> OutboxMessage:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        row = await _row(env, row_id)
        if check(row):
            return row
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"outbox row {row_id}: {row.status} attempts={row.attempts} error={row.last_error}"
            )
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- admin group upgraded
async def _basic_admin_group(sandbox: Sandbox) -> None:
    from sandbox.telegram_control import TelegramControl

    async with TelegramControl(sandbox.telegram_url) as tg:
        await tg.register_chat(OLD_GROUP, "group", title="Shop admins")


async def test_admin_group_upgrade_is_followed_from_the_service_message(tmp_path: Path) -> None:
    async with running_env(tmp_path, configure=_basic_admin_group, admin_chat_id=OLD_GROUP) as env:
        assert (await env.tg.upgrade_chat(OLD_GROUP))["id"] == NEW_GROUP
        # The bot follows at once: the notice is the first thing in the new group ...
        notice = await env.tg.wait_for_text(NEW_GROUP, "upgraded the admin group")
        assert f"from {OLD_GROUP} to {NEW_GROUP}" in notice["plain"]
        assert env.app.admin_chat.id == NEW_GROUP
        # ... alerts go straight there, and admin commands are accepted there.
        async with env.app.sessions() as session, session.begin():
            await env.app.notifier.admin(
                session, "admin.model_missing", dedupe="after-upgrade", model="vendor/y"
            )
        env.app.outbox.wake()
        await env.tg.wait_for_text(NEW_GROUP, "vendor/y")
        await env.tg.send_text(ADMIN_ID, "/stats", chat_id=NEW_GROUP)
        await env.tg.wait_for_text(NEW_GROUP, "Stats")
        assert await env.tg.events(chat_id=OLD_GROUP) == [], "nothing was sent to the old id"


async def test_admin_group_upgrade_is_followed_stored_and_announced(tmp_path: Path) -> None:
    async with running_env(tmp_path, configure=_basic_admin_group, admin_chat_id=OLD_GROUP) as env:
        # The bot never saw the service messages: it learns from the 400 answer.
        assert (await env.tg.upgrade_chat(OLD_GROUP, updates=False))["id"] == NEW_GROUP
        async with env.app.sessions() as session, session.begin():
            await env.app.notifier.admin(
                session, "admin.model_missing", dedupe="upgrade-test", model="vendor/x"
            )
        env.app.outbox.wake()

        # The alert is resent in the supergroup, with a notice saying why.
        await env.tg.wait_for_text(NEW_GROUP, "vendor/x")
        notice = await env.tg.wait_for_text(NEW_GROUP, "upgraded the admin group")
        assert str(NEW_GROUP) in notice["plain"]
        # (Joined into one message in the group; each row is marked right after.)
        for row in await env.outbox():
            row = await _wait_row(env, row.id, lambda r: r.status != "pending")
            assert (row.chat_id, row.status) == (NEW_GROUP, "sent")
        failed = [e for e in await env.tg.events(chat_id=OLD_GROUP) if not e["ok"]]
        assert [e["description"] for e in failed] == [
            "Bad Request: group chat was upgraded to a supergroup chat"
        ]

        # Stored: it overrides ADMIN_CHAT_ID after a restart too.
        assert env.app.admin_chat.id == NEW_GROUP
        async with env.app.sessions() as session:
            stored = (await session.execute(select(RuntimeSetting))).scalars().all()
        assert [(s.key, s.value) for s in stored] == [
            (f"admin_chat_moved_from:{OLD_GROUP}", str(NEW_GROUP))
        ]
        restarted = AdminChat(env.app.sessions, OLD_GROUP)
        await restarted.load()
        assert restarted.id == NEW_GROUP
        # ... but not when the operator points ADMIN_CHAT_ID at another group.
        elsewhere = AdminChat(env.app.sessions, -4242)
        await elsewhere.load()
        assert elsewhere.id == -4242

        # Admin commands are accepted in the new supergroup; reports go there as well.
        await env.tg.send_text(ADMIN_ID, "/stats", chat_id=NEW_GROUP)
        await env.tg.wait_for_text(NEW_GROUP, "Stats")
        assert env.app.reports.notifier.admin_chat_id == NEW_GROUP


# ---------------------------------------------------------------- every error class
@dataclass(frozen=True)
class Case:
    raises: type[Exception]
    fault: dict[str, Any]
    outcome: str  # sent (after a retry with a reason) | failed | dropped | moved


CASES = [
    Case(
        TelegramRetryAfter,
        {"status": 429, "body": _error(429, "Too Many Requests: retry after 1", retry_after=1)},
        "sent",
    ),
    Case(
        TelegramMigrateToChat,
        {
            "status": 400,
            "body": _error(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                migrate_to_chat_id=-1009009,
            ),
        },
        "moved",
    ),
    Case(TelegramBadRequest, {"status": 400, "body": _error(400, "Bad Request: oops")}, "failed"),
    Case(TelegramNotFound, {"status": 404, "body": _error(404, "Not Found")}, "failed"),
    Case(
        TelegramEntityTooLarge,
        {"status": 413, "body": _error(413, "Request Entity Too Large")},
        "failed",
    ),
    Case(
        TelegramForbiddenError,
        {"status": 403, "body": _error(403, "Forbidden: bot was blocked by the user")},
        "dropped",
    ),
    Case(TelegramUnauthorizedError, {"status": 401, "body": _error(401, "Unauthorized")}, "sent"),
    Case(
        TelegramConflictError,
        {"status": 409, "body": _error(409, "Conflict: terminated by other getUpdates")},
        "sent",
    ),
    Case(
        TelegramServerError,
        {"status": 500, "body": _error(500, "Internal Server Error")},
        "sent",
    ),
    Case(
        RestartingTelegram,
        {"status": 500, "body": _error(500, "Internal Server Error: restart")},
        "sent",
    ),
    Case(TelegramNetworkError, {"mode": "drop"}, "sent"),
    Case(TelegramAPIError, {"status": 420, "body": _error(420, "FLOOD_WAIT_3")}, "sent"),
    # Not a TelegramAPIError: a proxy's error page instead of Telegram's JSON.
    Case(ClientDecodeError, {"status": 502, "body": "<html>Bad Gateway</html>"}, "sent"),
]


def test_cases_cover_every_telegram_error_class() -> None:
    def subclasses(cls: type) -> set[type]:
        return {cls} | {s for sub in cls.__subclasses__() for s in subclasses(sub)}

    assert subclasses(TelegramAPIError) <= {case.raises for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.raises.__name__ for c in CASES])
async def test_every_telegram_error_ends_defined(tmp_path: Path, case: Case) -> None:
    async with running_env(tmp_path) as env:
        buyer = 880001
        await env.tg.register_chat(buyer, "private", first_name="Ann")
        await env.tg.register_chat(-1009009, "supergroup", title="Moved")
        retried = case.outcome == "sent" and case.raises is not TelegramRetryAfter
        # A retried error keeps failing until cleared, so the recorded reason can be seen.
        await env.tg.add_fault(path=SEND, count=None if retried else 1, **case.fault)
        row_id = await _queue(env, buyer, f"probe {case.raises.__name__}")

        if retried:
            row = await _wait_row(env, row_id, lambda r: r.attempts >= 1)
            assert row.status == "pending" and row.lease_until is None
            assert row.last_error and case.raises.__name__ in row.last_error
            # Put off by a backoff (≥ 1 s after it was queued), not resent at once. Not
            # "> now": a loaded machine may read the row after that second has passed.
            assert row.next_attempt_at - row.created_at >= timedelta(seconds=0.9)
            await env.tg.clear_faults()
        row = await _wait_row(env, row_id, lambda r: r.status != "pending", timeout=15)
        expected = "sent" if case.outcome == "moved" else case.outcome
        assert row.status == expected, row.last_error
        if case.outcome == "moved":
            assert row.chat_id == -1009009
            await env.tg.wait_for_text(-1009009, "probe")
        elif case.outcome == "sent":
            await env.tg.wait_for_text(buyer, "probe")
        else:
            assert row.last_error, "the reason is recorded"
