"""The chaos run (bench/chaos.py) at CI size, and regression tests for what it found.

The CI run uses real bot subprocesses, SIGKILLs them, injects ~20 % provider and
OpenRouter failures and replays callbacks; it must leave every paid order delivered
exactly once and every key limit equal to the buyer's ledger. See docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from bench.chaos import ChaosConfig, run_chaos
from core.clock import utcnow
from db.models import User
from tests.harness import running_env

BUYER = 717171


async def test_stalled_worker_that_lost_its_lease_does_not_patch(tmp_path: Path) -> None:
    """Defect 1: a worker whose lease expired mid-attempt PATCHed an older, lower limit.

    Another worker owns the buyer by the time this one gets its answer from OpenRouter;
    the stale worker must stop before the PATCH, not overwrite the newer ledger value.
    """
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        client = env.app.fulfilment.openrouter
        # The balance read is the last OpenRouter call before the PATCH (a new buyer's
        # key is no longer read back after POST /keys).
        real_credits = client.credits

        async def credits_while_overtaken() -> Any:
            info = await real_credits()
            # Meanwhile (a long stall) the lease ran out and another worker took the buyer.
            async with env.app.sessions() as session, session.begin():
                await session.execute(
                    update(User)
                    .where(User.id == BUYER)
                    .values(lease_owner="other-worker", lease_until=utcnow() + timedelta(minutes=5))
                )
            return info

        client.credits = credits_while_overtaken  # type: ignore[method-assign]
        await env.pay(order_id)
        await env.wait_status(order_id, "fulfilling")
        for _ in range(200):  # until the worker let go of the buyer
            if BUYER not in env.app.fulfilment._local:
                break
            await asyncio.sleep(0.02)
        patches = [r for r in await env.orc.requests() if r["method"] == "PATCH"]
        assert patches == []  # no write after the lease was lost
        assert (await env.order(order_id)).status == "fulfilling"  # left for the owner


def _pg_url() -> str | None:
    return os.environ.get("TEST_DATABASE_URL")


async def test_chaos_sqlite_one_process() -> None:
    report = await run_chaos(ChaosConfig(orders=20, db="sqlite", processes=1, seed=11, kills=2))
    print(report.table())
    assert report.ok, report.table()
    assert report.figures["delivered"] >= 12
    assert report.stats.kills == 2 and report.stats.faults_injected > 0
    _assert_both_rails(report)


@pytest.mark.skipif(
    not _pg_url(), reason="TEST_DATABASE_URL is not set: two replicas need PostgreSQL"
)
async def test_chaos_postgres_two_processes() -> None:
    report = await run_chaos(
        ChaosConfig(orders=20, processes=2, seed=12, kills=2, database_url=_pg_url())
    )
    print(report.table())
    assert report.ok, report.table()
    assert report.figures["delivered"] >= 12
    _assert_both_rails(report)


def _assert_both_rails(report: Any) -> None:
    """Issue 12: Crypto Pay orders are in the run (TON buyers, fallbacks in KryptoExpress
    outages), some of them paid and delivered, and Crypto Pay's own faults were hit."""
    by_provider = report.figures["orders_by_provider"]
    assert by_provider.get("kryptoexpress", 0) > 0 and by_provider.get("cryptopay", 0) > 0
    assert report.figures["delivered_by_provider"].get("cryptopay", 0) > 0
    # Fallbacks are not asserted: one needs a confirm inside a KryptoExpress outage window,
    # likely but not certain in a 20-order run (CI once saw none); test_cryptopay_buy.py
    # proves fallback deterministically, and the big runs count it (docs/reliability.md).
    assert report.stats.outages > 0 and report.stats.cryptopay_faults > 0
