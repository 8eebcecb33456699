"""The shared funds lease: one holder at a time across replicas, fenced writes, takeover."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select, update

from bot.app import BotApp
from core.clock import utcnow
from db.models import FundsLedger
from processing.fulfilment import KEY_NAME_PREFIX
from processing.funds import FundsBusy, SharedFunds
from tests.harness import running_env


def _replica(app: BotApp, wait: float | None = None) -> SharedFunds:
    """The funds side of another replica: same database and OpenRouter, its own state."""
    funds = SharedFunds(
        app.sessions,
        app.openrouter,
        key_prefix=KEY_NAME_PREFIX,
        lease=timedelta(seconds=30),
    )
    if wait is not None:
        funds.wait = wait
    return funds


async def test_a_held_lease_keeps_the_other_replica_out(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        one, two = _replica(env.app), _replica(env.app, wait=0.3)
        async with one.hold():
            with pytest.raises(FundsBusy):
                async with two.hold():
                    pass
        async with two.hold():  # let go: the other gets it at once
            pass


async def test_an_expired_holder_is_fenced_out_after_a_takeover(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        one, two = _replica(env.app), _replica(env.app, wait=1.0)
        async with one.hold() as stalled:
            await stalled.headroom(Decimal("1"))
            # The holder stalls past its lease (a GC pause, a hung call) ...
            async with env.app.sessions() as session, session.begin():
                await session.execute(
                    update(FundsLedger).values(lease_until=utcnow() - timedelta(seconds=1))
                )
            async with two.hold() as fresh:  # ... another replica takes over ...
                fresh.spent(Decimal("2"))
                with pytest.raises(FundsBusy):  # ... and the stalled one may not PATCH
                    async with env.app.sessions() as session, session.begin():
                        await stalled.confirm(session)
            stalled.spent(Decimal("5"))  # nor book anything when it finally lets go
        async with env.app.sessions() as session:
            row = (await session.execute(select(FundsLedger))).scalar_one()
        assert row.committed == Decimal("2")  # measured 0 committed, plus the one raise
        assert row.lease_owner is None
        # The taker could not know what the stalled holder did: the figure is re-measured.
        assert row.measured_at is None


async def test_a_dead_holder_leaves_the_figure_to_be_measured_afresh(tmp_path: Path) -> None:
    """A holder killed between its PATCH and letting go booked nothing: don't trust it."""
    async with running_env(tmp_path) as env:
        await env.orc.set_credits(total_credits=Decimal("5.00"), total_usage=Decimal("0"))
        one, two = _replica(env.app), _replica(env.app, wait=1.0)
        async with one.hold() as hold:
            await hold.headroom(Decimal("1"))
        async with env.app.sessions() as session, session.begin():
            # A third holder took the lease and died; its lease has run out.
            await session.execute(
                update(FundsLedger).values(
                    lease_owner="dead", lease_until=utcnow() - timedelta(seconds=1)
                )
            )
        before = len(await env.orc.requests())
        async with two.hold() as hold:
            await hold.headroom(Decimal("1"))
        credits_reads = [
            r for r in (await env.orc.requests())[before:] if r["path"].endswith("/credits")
        ]
        assert len(credits_reads) == 1


async def test_headroom_is_remeasured_when_too_short_and_then_shared(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.orc.set_credits(total_credits=Decimal("5.00"), total_usage=Decimal("0"))
        one, two = _replica(env.app), _replica(env.app)
        async with one.hold() as hold:
            assert (await hold.headroom(Decimal("1"))).headroom == Decimal("5.00")
            hold.spent(Decimal("4.00"))
        before = len(await env.orc.requests())
        async with two.hold() as hold:  # the other replica sees the raise without a call
            assert (await hold.headroom(Decimal("1"))).headroom == Decimal("1.00")
        assert len(await env.orc.requests()) == before
        await env.orc.set_credits(total_credits=Decimal("9.00"))
        async with two.hold() as hold:  # too short for $3: measured afresh, never refused stale
            assert (await hold.headroom(Decimal("3"))).headroom == Decimal("9.00")
        assert len(await env.orc.requests()) > before


async def test_a_background_listing_never_drops_a_raise_booked_while_it_ran(
    tmp_path: Path,
) -> None:
    async with running_env(tmp_path) as env:
        await env.orc.set_credits(total_credits=Decimal("10.00"), total_usage=Decimal("0"))
        background, one, two = _replica(env.app), _replica(env.app), _replica(env.app)
        listing = background._list_committed

        async def listing_while_others_deliver() -> Decimal:
            listed = await listing()  # read before the raise below: $0
            async with one.hold() as hold:  # a delivery measures the unknown figure ...
                await hold.headroom(Decimal("4"))
                hold.spent(Decimal("4"))  # ... raises a key by $4 and books it
            async with two.hold() as hold:
                await hold.headroom(Decimal("1"))
                hold.forget()  # the next delivery's PATCH has an unknown outcome
            return listed

        background._list_committed = listing_while_others_deliver  # type: ignore[method-assign]
        assert await background.relist_if_due()
        async with env.app.sessions() as session:
            row = (await session.execute(select(FundsLedger))).scalar_one()
        # $4 is committed on a key: the figure is either unknown or counts it.
        assert row.measured_at is None or (row.committed or 0) >= Decimal("4")
