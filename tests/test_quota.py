"""📊 Quota: figures from OpenRouter, a short cache, runway, and last known figures when down."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import update

from core.clock import utcnow
from db.models import ApiKey
from services.quota import QuotaService
from tests.harness import running_env

BUYER = 919191


async def _delivered_buyer(env) -> dict:  # type: ignore[no-untyped-def]
    order_id = await env.buy(BUYER)
    await env.pay(order_id)
    await env.delivered_message(BUYER, order_id)
    return next(k for k in await env.orc.keys() if not k["deleted"])


async def test_quota_figures_equal_openrouter_with_runway(tmp_path: Path) -> None:
    async with running_env(tmp_path, quota_cache_seconds=0) as env:
        key = await _delivered_buyer(env)
        # 0.35 used this week → pace 0.05/day; remaining 1.30 lasts 26 days.
        await env.orc.spend(
            key["hash"],
            Decimal("0.35"),
            daily=Decimal("0.10"),
            weekly=Decimal("0.35"),
            monthly=Decimal("0.35"),
        )
        await env.tg.send_text(BUYER, "/quota")
        screen = await env.tg.wait_for_text(BUYER, "Your quota")
        emulated = next(k for k in await env.orc.keys() if k["hash"] == key["hash"])
        assert emulated["limit"] == Decimal("1.65") and emulated["usage"] == Decimal("0.35")
        for fragment in (
            "Limit: $1.65",
            "Used: $0.35",
            "Remaining: $1.30",
            "Today $0.10",
            "this week $0.35",
            "this month $0.35",
            "▓▓░░░░░░░░ 21% used",
            "≈ 86,666 tokens of anthropic/claude-3-sonnet",
            "this lasts ≈ 26 days",
        ):
            assert fragment in screen["plain"], (fragment, screen["plain"])


async def test_repeated_taps_are_served_from_a_short_cache(tmp_path: Path) -> None:
    async with running_env(tmp_path, quota_cache_seconds=60) as env:
        key = await _delivered_buyer(env)
        before = len(
            [
                r
                for r in await env.orc.requests()
                if r["method"] == "GET" and r["path"].endswith(key["hash"])
            ]
        )
        for _ in range(3):
            await env.tg.send_text(BUYER, "/quota")
        while (
            len([m for m in await env.tg.messages(BUYER) if "Your quota" in (m["plain"] or "")]) < 3
        ):
            await env.tg.wait_for_text(BUYER, "Your quota")
        reads = [
            r
            for r in await env.orc.requests()
            if r["method"] == "GET" and r["path"].endswith(key["hash"])
        ]
        assert len(reads) - before <= 1  # the fulfilment's own read may count once


async def test_openrouter_down_shows_last_known_figures_with_their_age(tmp_path: Path) -> None:
    async with running_env(tmp_path, quota_cache_seconds=0) as env:
        key = await _delivered_buyer(env)
        await env.tg.send_text(BUYER, "/quota")
        await env.tg.wait_for_text(BUYER, "Remaining: $1.65")
        # Make the remembered figures 5 minutes old, then take OpenRouter down.
        async with env.app.sessions() as session, session.begin():
            await session.execute(
                update(ApiKey)
                .where(ApiKey.user_id == BUYER)
                .values(last_checked_at=utcnow() - timedelta(minutes=5))
            )
        await env.orc.add_fault(path="/api/v1/keys", status=503, count=None)
        before = len(await env.tg.messages(BUYER))
        await env.tg.send_text(BUYER, "/quota")
        stale = await env.tg.wait_for(
            BUYER,
            lambda m: m["from_bot"] and "last known figures" in (m["plain"] or ""),
            timeout=15,
        )
        assert "from 5 minutes ago" in stale["plain"] and "Remaining: $1.65" in stale["plain"]
        assert len(await env.tg.messages(BUYER)) > before
        assert key["hash"]


async def test_openrouter_down_and_nothing_known_says_so(tmp_path: Path) -> None:
    async with running_env(tmp_path, quota_cache_seconds=0) as env:
        await _delivered_buyer(env)
        async with env.app.sessions() as session, session.begin():
            await session.execute(
                update(ApiKey)
                .where(ApiKey.user_id == BUYER)
                .values(last_checked_at=None, last_limit=None)
            )
        await env.orc.add_fault(path="/api/v1/keys", status=503, count=None)
        await env.tg.send_text(BUYER, "/quota")
        await env.tg.wait_for_text(
            BUYER, "OpenRouter is not answering right now, so your quota", timeout=15
        )


async def test_quota_right_after_a_delivery_shows_the_new_limit(tmp_path: Path) -> None:
    """Issue 9 §5: a delivery invalidates the buyer's cached figures, in this process
    and in another replica's (the cache is per process; its entries are tied to the
    key row that a delivery updates)."""
    async with running_env(tmp_path, quota_cache_seconds=60) as env:
        await _delivered_buyer(env)
        other = QuotaService(
            env.app.sessions, env.app.openrouter, env.app.catalog, "anthropic/claude-3-sonnet"
        )
        assert (await other.quota(BUYER, None)).limit == Decimal("1.65")  # type: ignore[union-attr]
        await env.tg.send_text(BUYER, "/quota")
        await env.tg.wait_for_text(BUYER, "Limit: $1.65")

        order_id = await env.buy(BUYER, new_chat=False)
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        await env.tg.send_text(BUYER, "/quota")
        screen = await env.tg.wait_for_text(BUYER, "Limit: $3.30")
        assert "Remaining: $3.30" in screen["plain"]
        assert (await other.quota(BUYER, None)).limit == Decimal("3.30")  # type: ignore[union-attr]


async def test_quota_after_a_delivery_with_openrouter_down_shows_the_new_limit(
    tmp_path: Path,
) -> None:
    """The last known figures fall back to what the delivery's PATCH answered."""
    async with running_env(tmp_path, quota_cache_seconds=60) as env:
        await _delivered_buyer(env)
        await env.tg.send_text(BUYER, "/quota")
        await env.tg.wait_for_text(BUYER, "Limit: $1.65")
        order_id = await env.buy(BUYER, new_chat=False)
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        await env.orc.add_fault(path="/api/v1/keys", method="GET", status=503, count=None)
        await env.tg.send_text(BUYER, "/quota")
        stale = await env.tg.wait_for(
            BUYER,
            lambda m: m["from_bot"] and "last known figures" in (m["plain"] or ""),
            timeout=15,
        )
        assert "Limit: $3.30" in stale["plain"], stale["plain"]
