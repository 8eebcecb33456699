"""The outbox sender within Telegram's limits, proven against the emulator's flood control.

The emulator (``/control/limits``) answers 429 like Telegram beyond 30 sends/s overall,
a burst of 3 then 1/s per chat, and 20 per window per group; its ``rate_stats`` record
what actually arrived when. (The 429 → pause-everything path is
tests/test_conversation.py::test_rate_limit_pauses_sending_then_delivers.)
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import func, insert, select

from core.clock import utcnow
from db import repo
from db.models import OutboxMessage, User
from processing.outbox import RateLimiter, SendLimits
from sandbox.runner import ADMIN_ID
from tests.harness import Env, running_env

BROADCAST_USERS = 2000
FIRST_USER = 5_000_000


# ------------------------------------------------------------------ pure pacing schedule
def _schedule(limiter: RateLimiter, chats: list[int], latency: float = 0.005) -> list[float]:
    """Send times the limiter allows for ``chats`` (one send each, in order, serially)."""
    now, times = 0.0, []
    for chat in chats:
        now += max(limiter.overall.delay(now), limiter.chat_delay(chat, now))
        limiter.take(chat, now)
        times.append(now)
        now += latency
        limiter.settle(chat, now)
    return times


def _max_in_window(times: list[float], window: float) -> int:
    return max(sum(1 for t in times if start <= t < start + window) for start in times)


def test_group_gets_at_most_20_per_minute() -> None:
    times = _schedule(RateLimiter(SendLimits()), [-100] * 25)
    assert times[:3] == [0.0, times[1], times[2]] and times[2] < 0.2  # a short burst
    # then 1/s: the k-th send needs the burst plus k - 2 refilled tokens
    assert all(t - times[0] >= k - 2 for k, t in enumerate(times[:20]))
    assert times[20] >= times[0] + 60.0  # the 21st waits for the first to leave the window
    assert _max_in_window(times, 60.0) == 20


def test_private_chat_burst_then_one_per_second_and_overall_pace() -> None:
    times = _schedule(RateLimiter(SendLimits()), [7] * 6)
    assert times[2] < 0.2 and all(t - times[0] >= k - 2 for k, t in enumerate(times))
    many = _schedule(RateLimiter(SendLimits()), list(range(1, 200)))
    assert _max_in_window(many, 1.0) <= 30


def _pipelined(
    limiter: RateLimiter, sends: int, latency: float, concurrency: int = 8
) -> list[tuple[float, float]]:
    """(start, end) of ``sends`` sends to distinct chats, each as soon as the limiter and
    the ``concurrency`` requests in flight allow, each answered ``latency`` after it starts
    (the sender's loop, on a simulated clock)."""
    now, flights, done = 0.0, [], []
    for chat in range(1, sends + 1):
        while True:
            for end, c in sorted(f for f in flights if f[0] <= now):
                limiter.settle(c, end)
                flights.remove((end, c))
            wait = max(limiter.overall.delay(now), limiter.chat_delay(chat, now))
            if wait <= 0 and len(flights) < concurrency:
                break
            # Wake at the first moment something may change: the wait ends or an answer.
            now = min([now + wait] * (wait > 0) + [end for end, _ in flights])
        limiter.take(chat, now)
        flights.append((now + latency, chat))
        done.append((now, now + latency))
    return done


def _worst_case_in_any_second(sends: list[tuple[float, float]]) -> int:
    """The most sends Telegram could see within one second when each arrives anywhere
    between its start and its answer: sends ``i`` with ``start_i <= start_j`` and
    ``end_i > start_j - 1`` can all land within ``(start_j - 1, start_j]``."""
    starts = [s for s, _ in sends]  # in order: the limiter starts them one after another
    return max(
        # 1e-9: in floats (e + 1) - 1 may fall just short of e
        sum(1 for s, e in sends[max(0, j - 200) : j + 1] if e > starts[j] - 1.0 + 1e-9)
        for j in range(len(sends))
    )


def test_broadcast_pace_reaches_30_per_second_without_a_chance_of_31() -> None:
    """Telegram's 30/s exactly: 30 per second plus one round trip, never 31 in a second
    wherever in its round trip each send lands (issue 14 item 5: ≥ 95 % of 30/s)."""
    for latency in (0.002, 0.02, 0.05):
        sends = _pipelined(RateLimiter(SendLimits()), 600, latency)
        assert _worst_case_in_any_second(sends) <= 30, latency
        rate = (len(sends) - 1) / (sends[-1][0] - sends[0][0])
        # The only pace lost is one round trip per 30 sends: ≥ 95 % of 30/s on loopback.
        assert rate >= 0.99 * 30 / (1 + latency), (latency, rate)


# ------------------------------------------------------------------------ end to end
async def _create_buyers(env: Env, ids: list[int]) -> None:
    now = utcnow()
    async with env.app.sessions() as session, session.begin():
        await session.execute(
            insert(User),
            [{"id": i, "language": "en", "first_name": f"B{i}", "created_at": now} for i in ids],
        )
    for start in range(0, len(ids), 100):
        await asyncio.gather(*(env.tg.register_chat(i) for i in ids[start : start + 100]))


async def _broadcast_rows(env: Env, status: str | None = None) -> int:
    async with env.app.sessions() as session:
        query = select(func.count()).select_from(OutboxMessage)
        query = query.where(OutboxMessage.broadcast_id.is_not(None))
        if status is not None:
            query = query.where(OutboxMessage.status == status)
        return int((await session.execute(query)).scalar_one())


async def test_broadcast_to_2000_buyers_within_telegram_limits(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        buyers = list(range(FIRST_USER, FIRST_USER + BROADCAST_USERS))
        await _create_buyers(env, buyers)
        await env.tg.set_limits(enforce=True)  # Telegram's numbers: 30/s, 1/s burst 3, 20/min

        await env.tg.send_text(ADMIN_ID, "/broadcast Big news: new models!")
        recipients = BROADCAST_USERS + 1  # the admin is a buyer too (their /broadcast made it)
        await env.tg.wait_for_text(ADMIN_ID, f"It will go to {recipients:,} buyers")
        started = time.monotonic()
        await env.tg.press(ADMIN_ID, f"✅ Send to {recipients:,} buyers")

        deadline = started + 180
        while await _broadcast_rows(env, "sent") < recipients:
            assert time.monotonic() < deadline, "broadcast did not finish"
            await asyncio.sleep(1.0)
        elapsed = time.monotonic() - started
        done = await env.tg.wait_for_text(
            ADMIN_ID, f"Done: {recipients} sent, 0 unreachable", timeout=15
        )
        assert done["edited"] >= 2  # progress was shown on the way ("Sent k of N…")
        assert await _broadcast_rows(env) == recipients

        sends = [
            e
            for e in await env.tg.events()
            if e["method"] == "sendMessage" and e["ok"] and e["chat_id"] in set(buyers)
        ]
        per_chat = Counter(e["chat_id"] for e in sends)
        assert set(per_chat) == set(buyers) and set(per_chat.values()) == {1}  # exactly once

        stats = await env.tg.rate_stats()
        assert stats["rejected_429"] == 0, stats["rejected_429"]
        assert stats["max_per_second"] <= 30 and stats["max_in_any_second"] <= 30, stats
        assert stats["max_per_chat_in_any_second"] <= 3
        at = sorted(e["at"] for e in sends)
        rate = (len(at) - 1) / (at[-1] - at[0])
        print(
            f"\nbroadcast of {recipients}: {rate:.1f} msgs/s while sending, "
            f"{recipients / elapsed:.1f} msgs/s confirm-to-sent ({elapsed:.1f} s), "
            f"busiest second {stats['max_per_second']}, busiest sliding second "
            f"{stats['max_in_any_second']}, 429s {stats['rejected_429']}"
        )
        # Not a timid crawl: pacing aims at 30/s. The figure itself is bench/broadcast.py's
        # to measure (a loaded 2-core machine has shown 22/s here), so this only guards
        # against pacing that waits far longer than it must.
        assert rate > 15


async def test_admin_alert_burst_is_joined_within_the_group_limit(tmp_path: Path) -> None:
    """600 alerts at once reach the admin group joined into few messages (≤ 25 alerts and
    < 4,096 characters each), in order, each exactly once, within 20 per window (window
    shortened to 2 s; the emulator enforces the same window)."""
    window = 2.0
    async with running_env(tmp_path) as env:
        await env.tg.set_limits(
            enforce=True, per_chat_per_second=20, group_per_minute=20, group_window=window
        )
        env.app.outbox.configure(
            SendLimits(per_chat_per_second=20, group_limit=20, group_window=window)
        )
        async with env.app.sessions() as session, session.begin():
            for n in range(600):
                await repo.add_outbox(
                    session, chat_id=env.admin_chat, text=f"Alert {n:03d}", dedupe_key=f"burst:{n}"
                )
        env.app.outbox.wake()
        await env.tg.wait_for_text(env.admin_chat, "Alert 599", timeout=30)
        records = [m for m in await env.tg.messages(env.admin_chat) if m["from_bot"]]
        messages = [m for m in records if (m["plain"] or "").startswith("Alert")]
        alerts = [line for m in messages for line in m["plain"].split("\n\n")]
        assert alerts == [f"Alert {n:03d}" for n in range(600)]  # once, in order
        # Up to 25 a message; a claim round may end on a short one: ~24 sends, not 600.
        assert all(len(m["plain"].split("\n\n")) <= 25 for m in messages)
        assert 24 <= len(messages) <= 30
        assert all(len(m["text"]) < 4096 for m in messages)

        stats = await env.tg.rate_stats()
        assert stats["rejected_429"] == 0
        assert stats["group_max_in_window"][str(env.admin_chat)] <= 20
        sent_at = sorted(
            e["at"]
            for e in await env.tg.events(chat_id=env.admin_chat)
            if e["method"] == "sendMessage" and e["ok"]
        )
        assert sent_at[20] - sent_at[0] >= window  # the 21st message waited for the window
        assert math.isclose(stats["limits"]["group_window"], window)
        for _ in range(100):  # the joined rows are marked sent right after the send
            rows = [r for r in await env.outbox() if r.chat_id == env.admin_chat]
            if {r.status for r in rows} == {"sent"}:
                break
            await asyncio.sleep(0.05)
        assert {r.status for r in rows} == {"sent"}


async def test_buyers_answered_during_a_broadcast_provoke_no_429(tmp_path: Path) -> None:
    """A handler's answer shares the bot's 30/s with the outbox, which keeps that limit
    with no margin: an answer sent into a second the broadcast already filled would be
    the 31st send, a 429 that loses the answer and blocks the whole bot."""
    async with running_env(tmp_path) as env:
        buyers = list(range(FIRST_USER, FIRST_USER + 600))
        await _create_buyers(env, buyers)
        await env.tg.set_limits(enforce=True)

        await env.tg.send_text(ADMIN_ID, "/broadcast Big news: new models!")
        recipients = len(buyers) + 1
        await env.tg.wait_for_text(ADMIN_ID, f"It will go to {recipients:,} buyers")
        await env.tg.press(ADMIN_ID, f"✅ Send to {recipients:,} buyers")
        while await _broadcast_rows(env, "sent") < 60:  # the broadcast is at full pace
            await asyncio.sleep(0.1)
        talkers = buyers[-40:]  # their broadcast message comes last: no per-chat clash
        for buyer in talkers:
            await env.tg.send_text(buyer, "/help")
            await asyncio.sleep(0.05)
        for buyer in talkers:
            await env.tg.wait_for_text(buyer, "How it works", timeout=60)

        stats = await env.tg.rate_stats()
        assert stats["rejected_429"] == 0, stats
        assert stats["max_in_any_second"] <= 30, stats
