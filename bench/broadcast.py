"""Benchmark 3: a broadcast to many buyers and an admin alert burst, vs Telegram's limits.

The emulator enforces Telegram's flood limits (``set_limits(enforce=True)``: 30 sends/s
overall, 1/s per chat after a burst of 3, 20 per minute per group) and records every
send. The ceiling is Telegram's 30 msg/s; the figure is the achieved send rate as a
fraction of it, with lost (a buyer never sent to) and duplicated (sent more than once)
messages and the seconds in which more than 30 sends landed.

    python -m bench.broadcast [--buyers N] [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from bench.common import machine, print_json, save
from core.clock import utcnow
from db import repo
from db.models import OutboxMessage, User
from processing.outbox import SendLimits
from sandbox.runner import ADMIN_ID

FIRST_BUYER = 9_000_000
TELEGRAM_PER_SECOND = 30


def seconds_over(times: list[float], limit: int) -> tuple[int, int]:
    """(calendar seconds with more than ``limit`` sends, the most in any sliding second)."""
    per_second = Counter(math.floor(t) for t in times)
    over = sum(1 for n in per_second.values() if n > limit)
    ordered = sorted(times)
    busiest, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - 1.0:
            start += 1
        busiest = max(busiest, end - start + 1)
    return over, busiest


async def _count(env: Any, status: str | None = None) -> int:
    async with env.app.sessions() as session:
        query = select(func.count()).select_from(OutboxMessage)
        query = query.where(OutboxMessage.broadcast_id.is_not(None))
        if status is not None:
            query = query.where(OutboxMessage.status == status)
        return int((await session.execute(query)).scalar_one())


async def broadcast(buyers: int) -> dict[str, Any]:
    from tests.harness import running_env

    with tempfile.TemporaryDirectory() as tmp:
        async with running_env(Path(tmp)) as env:
            ids = list(range(FIRST_BUYER, FIRST_BUYER + buyers))
            now = utcnow()
            async with env.app.sessions() as session, session.begin():
                for start in range(0, len(ids), 5000):
                    await session.execute(
                        insert(User),
                        [
                            {"id": i, "language": "en", "first_name": f"B{i}", "created_at": now}
                            for i in ids[start : start + 5000]
                        ],
                    )
            for start in range(0, len(ids), 200):
                await asyncio.gather(*(env.tg.register_chat(i) for i in ids[start : start + 200]))
            await env.tg.set_limits(enforce=True)

            await env.tg.send_text(ADMIN_ID, "/broadcast Benchmark news")
            recipients = buyers + 1  # the admin is a buyer too
            await env.tg.wait_for_text(ADMIN_ID, f"It will go to {recipients:,} buyers", timeout=60)
            started = time.time()
            await env.tg.press(ADMIN_ID, f"✅ Send to {recipients:,} buyers")
            deadline = time.monotonic() + recipients / 20 + 120
            # The outbox rows are the record; nothing signals "all sent", so poll them.
            while await _count(env, "sent") < recipients and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(1.0)
            elapsed = time.time() - started

            wanted = set(ids)
            sends = [
                e
                for e in env.sandbox.telegram.events
                if e.method == "sendMessage" and e.ok and e.chat_id in wanted
            ]
            per_chat = Counter(e.chat_id for e in sends)
            at = sorted(e.at for e in sends)
            all_sends = [
                e.at
                for e in env.sandbox.telegram.events
                if e.ok and e.method.startswith(("send", "copy", "forward"))
            ]
            over, busiest = seconds_over(all_sends, TELEGRAM_PER_SECOND)
            stats = await env.tg.rate_stats()
            rate = (len(at) - 1) / (at[-1] - at[0]) if len(at) > 1 else 0.0
            return {
                "buyers": buyers,
                "recipients": recipients,
                "sent_rows": await _count(env, "sent"),
                "seconds": round(elapsed, 1),
                "send_rate_per_s": round(rate, 2),
                "press_to_last_sent_rate_per_s": round(len(at) / elapsed, 2) if elapsed else 0,
                "fraction_of_30": round(rate / TELEGRAM_PER_SECOND, 3),
                "lost": len(wanted - set(per_chat)),
                "duplicated": sum(1 for n in per_chat.values() if n > 1),
                "seconds_over_30": over,
                "busiest_sliding_second": busiest,
                "max_per_chat_in_any_second": stats["max_per_chat_in_any_second"],
                "rejected_429": stats["rejected_429"],
            }


async def alert_burst(alerts: int = 45, window: float = 3.0) -> dict[str, Any]:
    """``alerts`` admin alerts at once; the group limit is 20 per window (window
    shortened from 60 s to ``window`` s in both the emulator and the sender)."""
    from tests.harness import running_env

    with tempfile.TemporaryDirectory() as tmp:
        async with running_env(Path(tmp)) as env:
            await env.tg.set_limits(
                enforce=True, per_chat_per_second=20, group_per_minute=20, group_window=window
            )
            env.app.outbox.configure(
                SendLimits(per_chat_per_second=20, group_limit=20, group_window=window)
            )
            async with env.app.sessions() as session, session.begin():
                for n in range(alerts):
                    await repo.add_outbox(
                        session, chat_id=env.admin_chat, text=f"Alert {n:03d}", dedupe_key=f"b:{n}"
                    )
            started = time.time()
            env.app.outbox.wake()
            await env.tg.wait_for_text(env.admin_chat, f"Alert {alerts - 1:03d}", timeout=60)
            elapsed = time.time() - started
            sent = [
                m
                for m in env.sandbox.telegram.messages.get(env.admin_chat, {}).values()
                if m.from_bot and m.plain.startswith("Alert")
            ]
            # The sender may pack several queued alerts into one message: count alerts.
            texts = Counter(
                line for m in sent for line in m.plain.splitlines() if line.startswith("Alert")
            )
            stats = await env.tg.rate_stats()
            ideal = math.ceil(alerts / 20 - 1) * window  # the last window can start no sooner
            return {
                "alerts": alerts,
                "group_window_s": window,
                "seconds": round(elapsed, 2),
                "ideal_seconds": ideal,
                "messages": len(sent),
                "lost": alerts - len(texts),
                "duplicated": sum(1 for n in texts.values() if n > 1),
                "max_in_window": stats["group_max_in_window"].get(str(env.admin_chat)),
                "limit_in_window": 20,
                "rejected_429": stats["rejected_429"],
            }


async def run(buyers: int, runs: int = 1) -> dict[str, Any]:
    """``runs`` broadcasts (min / median / max of each figure); ``broadcast`` is the
    median run by send rate, so a single-run reader sees a typical one."""
    results = [await broadcast(buyers) for _ in range(runs)]
    ordered = sorted(results, key=lambda r: r["send_rate_per_s"])
    spread = {
        field: {
            "min": min(r[field] for r in results),
            "median": statistics.median(r[field] for r in results),
            "max": max(r[field] for r in results),
        }
        for field in ("fraction_of_30", "send_rate_per_s", "seconds", "rejected_429")
    }
    return {
        "broadcast": ordered[len(ordered) // 2],
        "runs": runs,
        "spread": spread,
        "alerts": await alert_burst(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buyers", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=None, help="broadcasts (default 3; 1 quick)")
    args = parser.parse_args(argv)
    buyers = args.buyers or (600 if args.quick else 10_000)
    runs = args.runs or (1 if args.quick else 3)
    result = {"machine": machine(), **asyncio.run(run(buyers, runs))}
    save("broadcast", result, quick=args.quick)
    print_json(result)
    return result


if __name__ == "__main__":
    main()
