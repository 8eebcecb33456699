"""/broadcast: admins only, preview → confirm once, progress, and survival of a restart."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import func, insert, select

from bot.app import BotApp
from core.clock import utcnow
from db.models import Broadcast, OutboxMessage, User
from processing.scheduler import JobIntervals
from sandbox.runner import ADMIN_ID
from tests.harness import IDLE, Env, running_env

STRANGER = 818181
FIRST_USER = 6_000_000


async def _create_buyers(env: Env, ids: list[int]) -> None:
    now = utcnow()
    async with env.app.sessions() as session, session.begin():
        await session.execute(
            insert(User), [{"id": i, "language": "en", "created_at": now} for i in ids]
        )
    await asyncio.gather(*(env.tg.register_chat(i) for i in ids))


async def _count(env: Env, *where: object) -> int:
    async with env.app.sessions() as session:
        query = select(func.count()).select_from(OutboxMessage).where(*where)  # type: ignore[arg-type]
        return int((await session.execute(query)).scalar_one())


async def _broadcasts(env: Env) -> list[Broadcast]:
    async with env.app.sessions() as session:
        return list((await session.execute(select(Broadcast).order_by(Broadcast.id))).scalars())


async def test_non_admin_broadcast_gets_the_ordinary_answer(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(STRANGER)
        sent = await env.tg.send_text(STRANGER, "/broadcast Free tokens for everyone!")
        answer = await env.tg.wait_for(
            STRANGER, lambda m: m["from_bot"] and m["message_id"] > sent["message_id"]
        )
        assert "didn't understand" in answer["plain"]
        assert not any("Send to" in b["text"] for row in answer["buttons"] for b in row)
        assert await _broadcasts(env) == []
        # A forged confirm button from a non-admin queues nothing either.
        pressed = await env.tg.forge_callback(STRANGER, answer["message_id"], "bc:send:1")
        await env.tg.callback_answer(pressed["callback_query_id"])
        assert await _count(env, OutboxMessage.broadcast_id.is_not(None)) == 0


async def test_double_tap_queues_once_and_cancel_sends_nothing(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        buyers = [FIRST_USER + n for n in range(5)]
        await _create_buyers(env, buyers)
        await env.tg.send_text(ADMIN_ID, "/broadcast <b>not markup</b> & more")
        preview = await env.tg.wait_for_text(ADMIN_ID, "It will go to 6 buyers")
        assert "<b>not markup</b> & more" in preview["plain"]  # shown as typed
        first = await env.tg.press(ADMIN_ID, "✅ Send to 6 buyers")
        second = await env.tg.forge_callback(ADMIN_ID, preview["message_id"], first["data"])
        answers = [
            await env.tg.callback_answer(tap["callback_query_id"]) for tap in (first, second)
        ]
        # Updates run concurrently: whichever tap lost the compare-and-set is told so.
        assert sum("already" in (a["text"] or "") for a in answers) == 1
        await env.tg.wait_for_text(ADMIN_ID, "Done: 6 sent, 0 unreachable", timeout=15)
        for buyer in buyers:
            texts = [m["plain"] for m in await env.tg.messages(buyer)]
            assert texts == ["<b>not markup</b> & more"]
        assert await _count(env, OutboxMessage.broadcast_id.is_not(None)) == 6
        assert [b.status for b in await _broadcasts(env)] == ["done"]

        await env.tg.send_text(ADMIN_ID, "/broadcast Never mind")
        await env.tg.wait_for_text(ADMIN_ID, "Never mind")
        await env.tg.press(ADMIN_ID, "❌ Cancel")
        await env.tg.wait_for_text(ADMIN_ID, "Broadcast cancelled")
        assert [b.status for b in await _broadcasts(env)] == ["done", "cancelled"]
        assert await _count(env, OutboxMessage.broadcast_id.is_not(None)) == 6


async def test_broadcast_from_the_admin_group_counts_blocked_buyers_as_unreachable(
    tmp_path: Path,
) -> None:
    async with running_env(tmp_path) as env:
        buyers = [FIRST_USER + n for n in range(4)]
        await _create_buyers(env, buyers)
        # A deleted account: unlike a block (my_chat_member), Telegram does not tell the
        # bot, which learns it from the 403 when it sends.
        await env.tg.block(buyers[0], reason="deactivated")
        await env.tg.send_text(ADMIN_ID, "/broadcast Hello group", chat_id=env.admin_chat)
        await env.tg.wait_for_text(env.admin_chat, "It will go to 4 buyers")
        await env.tg.press(ADMIN_ID, "✅ Send to 4 buyers", chat_id=env.admin_chat)
        await env.tg.wait_for_text(env.admin_chat, "Done: 3 sent, 1 unreachable", timeout=15)


async def test_broadcast_resumes_after_a_restart_without_duplicates(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        buyers = [FIRST_USER + n for n in range(120)]
        await _create_buyers(env, buyers)
        await env.tg.set_limits(enforce=True)
        await env.tg.send_text(ADMIN_ID, "/broadcast Maintenance tonight")
        await env.tg.wait_for_text(ADMIN_ID, "It will go to 121 buyers")
        await env.tg.press(ADMIN_ID, "✅ Send to 121 buyers")
        deadline = time.monotonic() + 20
        while await _count(env, OutboxMessage.status == "sent") < 30:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        settings = env.app.settings
        await env.app.stop()  # the process goes away mid-broadcast
        partial = await _count(env, OutboxMessage.status == "sent")
        assert 30 <= partial < 121

        restarted = BotApp(
            settings,
            intervals=JobIntervals(payment_poll=IDLE, expiry=IDLE, fulfilment=IDLE, prices=IDLE),
            outbox_idle=0.1,
        )
        await restarted.start()
        try:
            env.app = restarted
            await env.tg.wait_for_text(ADMIN_ID, "Done: 121 sent, 0 unreachable", timeout=30)
        finally:
            await restarted.stop()
        sends = Counter(
            e["chat_id"]
            for e in await env.tg.events()
            if e["method"] == "sendMessage" and e["ok"] and e["chat_id"] in set(buyers)
        )
        assert sends == dict.fromkeys(buyers, 1)  # every buyer exactly one copy
        assert (await env.tg.rate_stats())["rejected_429"] == 0
