"""Fulfilment when OpenRouter fails, when the process died mid-way, and when keys are orphaned."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx

from bot.app import BotApp
from core.clock import utcnow
from db import repo
from db.models import User
from processing.fulfilment import KEY_CREATE_STARTED, Fulfilment
from processing.scheduler import JobIntervals
from sandbox.runner import MANAGEMENT_KEY
from tests.harness import IDLE, running_env

BUYER = 616161
FAST_RETRY = {"retry_base": timedelta(milliseconds=50)}


async def test_transient_patch_failures_are_retried_by_the_client(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.orc.add_fault(path="/api/v1/keys/", method="PATCH", status=503, count=2)
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        patches = [r for r in await env.orc.requests() if r["method"] == "PATCH"]
        assert [r["status"] for r in patches] == [503, 503, 200]
        assert all(r["body"] == {"limit": Decimal("1.65")} for r in patches)  # same absolute value


async def test_outage_longer_than_retries_goes_back_to_paid_then_delivers(tmp_path: Path) -> None:
    intervals = JobIntervals(payment_poll=IDLE, expiry=IDLE, fulfilment=0.2, prices=IDLE)
    async with running_env(tmp_path, intervals=intervals, fulfilment=FAST_RETRY) as env:
        order_id = await env.buy(BUYER)
        await env.orc.add_fault(path="/api/v1/keys/", method="PATCH", status=502, count=None)
        await env.pay(order_id)
        for _ in range(100):
            kinds = [e.kind for e in await env.events(order_id)]
            if kinds.count("fulfilment_retry") >= 2:
                break
            await asyncio.sleep(0.1)
        assert kinds.count("fulfilment_retry") >= 2, kinds
        assert (await env.order(order_id)).status in ("paid", "fulfilling")
        await env.orc.clear_faults()
        await env.delivered_message(BUYER, order_id)
        keys = [k for k in await env.orc.keys() if not k["deleted"]]
        assert len(keys) == 1 and keys[0]["limit"] == Decimal("1.65")
        sent = [m for m in await env.tg.messages(BUYER) if "delivered" in (m["plain"] or "")]
        assert len(sent) == 1


async def test_rejected_management_key_fails_the_order_and_alerts(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.orc.add_fault(
            path="/api/v1/keys",
            status=401,
            count=None,
            body={"error": {"code": 401, "message": "Invalid credentials"}},
        )
        await env.pay(order_id)
        await env.wait_status(order_id, "failed")
        alert = await env.tg.wait_for_text(
            env.admin_chat, f"Fulfilment failed for order #{order_id}"
        )
        assert "Invalid credentials" in alert["plain"]
        assert f"(user {BUYER}, paid via kryptoexpress)" in alert["plain"]
        await env.tg.wait_for_text(BUYER, "Your payment is safe")
        assert (await env.order(order_id)).attempts == 1  # a 401 is not retried blindly


async def test_paid_order_survives_a_restart(tmp_path: Path) -> None:
    """Paid, then the process stops before delivery: the next start delivers it. The
    stop may cut an attempt that had already claimed the order; its lease then holds the
    order for at most FULFILMENT_LEASE_SECONDS (37 here, the shortest allowed), as after
    a crash."""
    async with running_env(tmp_path, fulfilment=FAST_RETRY, fulfilment_lease_seconds=37) as env:
        order_id = await env.buy(BUYER)
        await env.orc.add_fault(path="/api/v1/keys", status=503, count=None)
        await env.pay(order_id)
        await env.wait_status(order_id, "paid")  # back to paid after the failed attempt
        while "fulfilment_retry" not in [e.kind for e in await env.events(order_id)]:
            await asyncio.sleep(0.05)
        settings = env.app.settings
        await env.app.stop()  # the process goes away
        await env.orc.clear_faults()

        restarted = BotApp(
            settings,
            intervals=JobIntervals(payment_poll=IDLE, expiry=IDLE, fulfilment=0.2, prices=IDLE),
        )
        await restarted.start()
        try:
            env.app = restarted
            # What is proven is that the restart delivers, not how fast: within the
            # lease of a cut attempt plus a loaded machine's margin.
            await env.delivered_message(BUYER, order_id, timeout=90)
            keys = [k for k in await env.orc.keys() if not k["deleted"]]
            assert [k["limit"] for k in keys] == [Decimal("1.65")]
        finally:
            await restarted.stop()


async def test_killed_mid_fulfilment_is_reclaimed_after_the_lease(tmp_path: Path) -> None:
    """A worker died holding the buyer's lease with the order in ``fulfilling``."""
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        second = await env.buy(BUYER, new_chat=False, package="Standard")
        past = utcnow() - timedelta(seconds=1)
        # Simulate the crash: order claimed, lease taken, nobody left to finish.
        await env.update_order(
            second, status="fulfilling", lease_owner="dead-worker", lease_until=past
        )
        async with env.app.sessions() as session, session.begin():
            user = await session.get(User, BUYER)
            assert user is not None
            user.lease_owner, user.lease_until = "dead-worker", utcnow() + timedelta(hours=1)
        await env.app.fulfilment.run_due()
        assert (await env.order(second)).status == "fulfilling"  # the live lease is respected
        async with env.app.sessions() as session, session.begin():
            user = await session.get(User, BUYER)
            assert user is not None
            user.lease_until = past
        await env.app.fulfilment.run_due()
        await env.delivered_message(BUYER, second)
        keys = [k for k in await env.orc.keys() if not k["deleted"]]
        assert [k["limit"] for k in keys] == [Decimal("1.65") + Decimal("4.05")]


async def test_orphaned_key_from_a_crash_is_replaced_not_duplicated(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        # A crash right after POST /keys: the key exists at OpenRouter, we never stored it.
        async with httpx.AsyncClient(base_url=f"{env.sandbox.openrouter_url}/api/v1") as http:
            created = await http.post(
                "/keys",
                json={"name": f"tg-{BUYER}", "limit": 0},
                headers={"Authorization": f"Bearer {MANAGEMENT_KEY}"},
            )
            assert created.status_code == 201
        orphan_hash = created.json()["data"]["hash"]
        order_id = await env.buy(BUYER)
        # ... by an attempt that had recorded that it was about to create the key.
        async with env.app.sessions() as session, session.begin():
            repo.add_event(session, order_id, KEY_CREATE_STARTED, actor="worker:crashed")
        await env.pay(order_id)
        delivered = await env.delivered_message(BUYER, order_id)
        keys = await env.orc.keys()
        live = [k for k in keys if not k["deleted"]]
        assert len(live) == 1 and live[0]["hash"] != orphan_hash
        assert live[0]["limit"] == Decimal("1.65") and live[0]["key"] in delivered["text"]
        assert [k["hash"] for k in keys if k["deleted"]] == [orphan_hash]


async def test_first_key_is_created_without_listing_every_key(tmp_path: Path) -> None:
    """Listing all keys costs O(buyers) calls; a first delivery needs none of it."""
    async with running_env(tmp_path) as env:
        order_id = await env.buy(BUYER)
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        second = await env.buy(BUYER, package="Standard")
        await env.pay(second)
        await env.delivered_message(BUYER, second)
        lists = [
            r
            for r in await env.orc.requests()
            if r["method"] == "GET" and r["path"].endswith("/keys")
        ]
        # One funds read (a full list) for two back-to-back deliveries, no orphan scan.
        assert len(lists) == 1
        keys = [k for k in await env.orc.keys() if not k["deleted"]]
        assert [k["limit"] for k in keys] == [Decimal("5.70")]


async def test_two_replicas_cannot_spend_the_same_headroom(tmp_path: Path) -> None:
    """Funds for two orders, three paid, delivered by two replicas in turn.

    A replica that kept its own view of the headroom would not see the other's raise
    and let the third PATCH through, over-committing the operator's balance; the shared
    funds ledger makes the third order wait for funds with the exact top-up.
    """
    buyers = [BUYER, BUYER + 1, BUYER + 2]
    async with running_env(tmp_path) as env:
        app = env.app
        app.processor.on_paid = None  # orders stay "paid" until a replica is told to run
        orders = [await env.buy(buyer) for buyer in buyers]
        # Two Starter orders ($1.65 base each) and $0.35 to spare.
        await env.orc.set_credits(total_credits=Decimal("3.65"), total_usage=Decimal("0"))
        for order_id in orders:
            await env.pay(order_id)
            await env.wait_status(order_id, "paid")
        one = app.fulfilment
        two = Fulfilment(app.sessions, app.openrouter, app.vault, app.notifier)
        await two.fulfil_user(buyers[0])  # replica two measures: $3.65 − $1.65
        await one.fulfil_user(buyers[1])  # replica one spends most of the rest
        await two.fulfil_user(buyers[2])  # within seconds: two must see one's raise
        statuses = [(await env.order(order_id)).status for order_id in orders]
        assert statuses == ["delivered", "delivered", "awaiting_funds"]
        keys = [k for k in await env.orc.keys() if not k["deleted"]]
        assert sum((k["limit"] for k in keys), Decimal(0)) == Decimal("3.30")  # never 4.95
        # $0.35 left for a $1.65 order: the exact top-up is $1.30.
        await env.tg.wait_for_text(
            env.admin_chat, f"Order #{orders[2]} awaits funds. Top up OpenRouter by exactly $1.30"
        )
        await env.orc.set_credits(total_credits=Decimal("4.95"))
        await env.update_order(orders[2], next_attempt_at=utcnow())  # the recheck is due
        await one.fulfil_user(buyers[2])
        await env.wait_status(orders[2], "delivered")
        keys = [k for k in await env.orc.keys() if not k["deleted"]]
        assert sorted(k["limit"] for k in keys) == [Decimal("1.65")] * 3
