"""The operator's headroom on OpenRouter, one figure shared by every replica.

SPEC §2: before a key's limit is raised, the operator's balance (``GET /credits``:
total_credits − total_usage) must cover what buyer keys may already spend plus the
raise. The two halves are kept differently, because they cost differently:

- **The balance** is one call. It is read afresh whenever the kept one is older than
  ``ttl`` seconds (FUNDS_BALANCE_TTL_SECONDS, default 0: for every batch of raises,
  right before the lease is taken, see ``hold``), so usage *outside* buyers' keys — the
  operator's own key, another app on the account — lowers the headroom at once, with
  no listing.
- **What buyer keys may still spend** (``committed``, Σ limit_remaining) means listing
  every key: O(buyers) calls, 1,000 at 100,000 buyers. So it comes from our own ledger:
  the last full listing plus every raise we made since. That stays an upper bound with
  no listing at all: a buyer's usage only lowers what their key may still spend, and
  every raise of a limit is added to ``committed`` as it is made. The figure drifts high
  by what buyers spent since the listing, so the headroom drifts low, never high; a
  figure too short for an order is listed afresh before anyone is told to wait, and a
  background job re-lists every ``remeasure`` (FUNDS_REMEASURE_SECONDS) outside any
  delivery, so a delivery normally costs one balance read and no listing.

The figure must hold across processes too: two replicas that each kept their own
could both spend the same headroom. So it lives in one database row (``funds_ledger``),
and raising a limit is done only while holding that row's lease: read the figure
(re-measure when unknown or short), PATCH, add the raise, let go. The lease is a row
with an expiry, not a held transaction, because the PATCH it covers is a network call;
it must outlast one PATCH with its retries. A holder that died or whose PATCH has an
unknown outcome leaves the figure unknown (``measured_at`` NULL): the next one lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import ColumnElement, case, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from db import repo
from db.models import FundsLedger
from services.errors import OpenRouterError
from services.openrouter import OpenRouterClient

LEDGER_ID = 1

# Work done in the transaction that takes the funds lease (``SharedFunds.hold``).
Prepare = Callable[[AsyncSession], Awaitable[None]]


@dataclass(frozen=True)
class Funds:
    available: Decimal  # total_credits - total_usage, read at balance_at
    committed: Decimal  # Σ limit_remaining of every buyer key (an upper bound, see above)
    measured_at: datetime | None = None  # the key list's last full read
    balance_at: datetime | None = None  # when ``available`` was read

    @property
    def headroom(self) -> Decimal:
        return self.available - self.committed


class FundsBusy(OpenRouterError):
    """The funds lease could not be had in time, or was lost: try the order again later."""

    def __init__(self, message: str) -> None:
        super().__init__("funds", message, transient=True)


class SharedFunds:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        openrouter: OpenRouterClient,
        *,
        key_prefix: str,
        lease: timedelta = timedelta(seconds=45),
        ttl: float = 10.0,
        remeasure: timedelta = timedelta(minutes=15),
    ) -> None:
        self.sessions = sessions
        self.openrouter = openrouter
        self.key_prefix = key_prefix
        self.lease = lease
        self.ttl = ttl  # seconds a balance read is reused
        self.remeasure_every = remeasure  # how old the key listing may grow
        # A waiter gives up a little after a dead holder's lease would have run out.
        self.wait = lease.total_seconds() * 1.5

    async def measure(self) -> Funds:
        """Operator balance vs what buyer keys may still spend, straight from OpenRouter
        (one balance read and the whole key list)."""
        started = utcnow()
        credits = await self.openrouter.credits()
        committed = await self._list_committed()
        return Funds(credits.balance, committed, started, started)

    async def _list_committed(self) -> Decimal:
        committed = Decimal(0)
        async for key in self.openrouter.iter_keys():
            if key.name.startswith(self.key_prefix) and not key.disabled and key.limit is not None:
                remaining = key.limit_remaining
                if remaining is None:
                    remaining = key.limit - key.usage
                committed += max(Decimal(0), remaining)
        return committed

    async def relist_if_due(self) -> bool:
        """Job: list the keys when the figure is unknown or its listing older than
        ``remeasure``, without holding the lease (O(buyers) calls: at 100,000 keys that
        can outlast the lease, and deliveries go on meanwhile). Returns whether it listed.

        The listing replaces the figure only if nobody measured or lost track while it
        ran (``measured_at`` unchanged), and keeps the raises booked meanwhile on top: a
        raise whose PATCH the listing already saw is then counted twice, which only errs
        high. While the figure is unknown nobody books a raise without measuring first,
        so the listing alone is the figure — if the figure is still the one it found:
        ``generation`` unchanged. (``measured_at`` NULL at both ends is not enough: a
        holder may have measured, booked a raise the listing never saw, and a later
        unsure PATCH cleared ``measured_at`` again, all while the listing ran.)"""
        async with self.sessions() as session:
            row = await _row(session)
        since, booked_then, generation = row.measured_at, row.committed, row.generation
        known = since is not None and booked_then is not None
        if known and since is not None and utcnow() - since < self.remeasure_every:
            return False
        started = utcnow()
        credits = await self.openrouter.credits()
        listed = await self._list_committed()
        async with self.sessions() as session, session.begin():
            now_row = await _row(session)
            if not known:
                if now_row.generation != generation:
                    return True  # a delivery measured (or booked) meanwhile: that stands
                unchanged: list[ColumnElement[bool]] = [
                    FundsLedger.measured_at.is_(None),
                    FundsLedger.generation == generation,
                ]
                committed = listed
            else:
                if now_row.measured_at != since or now_row.committed is None:
                    return True  # re-measured or lost track meanwhile
                assert booked_then is not None
                # Compare-and-set on the figure read: a holder booking at this moment
                # writes its own (older, higher) bound over ours, still a bound.
                unchanged = [
                    FundsLedger.measured_at == since,
                    FundsLedger.committed == now_row.committed,
                ]
                committed = listed + (now_row.committed - booked_then)
            await session.execute(
                update(FundsLedger)
                .where(FundsLedger.id == LEDGER_ID, *unchanged)
                .values(
                    measured_at=started,
                    committed=committed,
                    available=credits.balance,
                    balance_at=started,
                    generation=FundsLedger.generation + 1,
                )
            )
        return True

    async def remeasure(self) -> Funds:
        """Measure now and share the figure, whatever its age (an admin's re-check, the
        waiting orders' periodic re-check): a top-up is seen at once."""
        async with self.hold() as hold:
            return await hold.measure()

    @contextlib.asynccontextmanager
    async def hold(
        self, *, then: Prepare | None = None, read_balance: bool = False
    ) -> AsyncIterator[FundsHold]:
        """The funds lease for a batch of raises; raises ``FundsBusy`` if not had in time.

        ``then`` runs in the transaction that takes the lease (a batch reads what it
        needs and re-asserts its buyers' leases there, saving a transaction per batch).
        ``read_balance``: the balance (``GET /credits``) is read right before the attempt
        that takes the lease, outside it, and serves every check of this hold alone.

        Why a balance read just before the lease is as safe as one read under it: usage
        outside buyers' keys (the operator's own key, another app) can lower the balance
        at any moment, just after a read under the lease as well as just after this one,
        so a read a transaction's time before the lease is exactly as fresh. Raises that
        other holders booked meanwhile are in the ledger's ``committed``, read under the
        lease, so headroom = this balance − committed still counts every raise. What is
        not allowed is a balance reused by another hold or kept for seconds (it missed
        outside usage: test_ai_token_flow's test_awaiting_funds_then_resume), so a lease
        that has to be waited for is tried each time with a balance read just before.
        What it saves: the holder makes no network call before its PATCHes, so a slow
        ``GET /credits`` (OpenRouter faults) no longer holds up every delivery of every
        replica queued behind the lease (docs/reliability.md).
        On the way out the raises (``spent``) are booked and the lease let go in one
        transaction. A holder that dies first books nothing, but leaves its name on the
        lease: whoever takes the expired lease over then measures afresh.
        """
        token = uuid.uuid4().hex
        known = await self._acquire(token, then, read_balance)
        hold = FundsHold(self, token, known, balance_read=read_balance)
        try:
            yield hold
        finally:
            await self._release(hold)

    async def _acquire(self, token: str, then: Prepare | None, read_balance: bool) -> Funds | None:
        deadline = time.monotonic() + self.wait
        pause = 0.01
        while True:
            fresh: dict[str, object] = {}
            if read_balance:  # before every attempt: never one read before a wait
                read_at = utcnow()
                credits = await self.openrouter.credits()
                fresh = {"available": credits.balance, "balance_at": read_at}
            now = utcnow()
            async with self.sessions() as session, session.begin():
                result = await session.execute(
                    update(FundsLedger)
                    .where(
                        FundsLedger.id == LEDGER_ID,
                        repo.lease_free(FundsLedger.lease_until, now),
                    )
                    .values(
                        lease_owner=token,
                        lease_until=now + self.lease,
                        # Taken over from a holder that never let go: it may have raised a
                        # limit without booking it, so the figure is no longer to be trusted.
                        measured_at=case(
                            (FundsLedger.lease_owner.is_(None), FundsLedger.measured_at),
                            else_=None,
                        ),
                        generation=FundsLedger.generation + 1,
                        **fresh,
                    )
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    row = (
                        await session.execute(
                            select(FundsLedger).where(FundsLedger.id == LEDGER_ID)
                        )
                    ).scalar_one()
                    if then is not None:
                        await then(session)
                    return _known(row)
            if time.monotonic() >= deadline:
                raise FundsBusy("the funds lease is held elsewhere")
            # Holders keep it for one PATCH (milliseconds to a few seconds): poll briskly,
            # with jitter so replicas don't wake in step.
            await asyncio.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.5)

    async def _release(self, hold: FundsHold) -> None:
        async with self.sessions() as session, session.begin():
            values: dict[str, object] = {
                "lease_owner": None,
                "lease_until": None,
                "generation": FundsLedger.generation + 1,
            }
            if hold.unsure:
                values["measured_at"] = None
            elif hold.booked:
                committed = (
                    await session.execute(
                        select(FundsLedger.committed).where(FundsLedger.id == LEDGER_ID)
                    )
                ).scalar_one()
                # Added in Python: SQLite keeps money as exact text, and only the holder
                # writes this figure, so read-then-write cannot lose an update.
                values["committed"] = (committed or Decimal(0)) + hold.booked
            # Fenced: a holder that lost the lease writes nothing (the taker re-measures).
            await session.execute(
                update(FundsLedger)
                .where(FundsLedger.id == LEDGER_ID, FundsLedger.lease_owner == hold.token)
                .values(**values)
            )

    async def fenced(self, session: AsyncSession, token: str, **values: object) -> None:
        """Write to the ledger only while still its holder (and extend the lease)."""
        result = await session.execute(
            update(FundsLedger)
            .where(FundsLedger.id == LEDGER_ID, FundsLedger.lease_owner == token)
            .values(lease_until=utcnow() + self.lease, **values)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise FundsBusy("the funds lease was lost")


async def _row(session: AsyncSession) -> FundsLedger:
    return (
        await session.execute(select(FundsLedger).where(FundsLedger.id == LEDGER_ID))
    ).scalar_one()


def _known(row: FundsLedger) -> Funds | None:
    """The stored figure, unless a holder lost track of it (then it must be listed)."""
    if row.measured_at is None or row.available is None or row.committed is None:
        return None
    return Funds(row.available, row.committed, row.measured_at, row.balance_at)


class FundsHold:
    """What the holder of the funds lease may do. Every write is fenced by the lease."""

    def __init__(
        self, funds: SharedFunds, token: str, known: Funds | None, *, balance_read: bool = False
    ) -> None:
        self._funds = funds
        self.token = token
        self._known = known
        # The balance was read for this hold (``hold(read_balance=True)``): no TTL applies.
        self._balance_read = balance_read
        self.booked = Decimal(0)
        self.unsure = False
        self.measured = False  # a network call since the lease was taken or confirmed

    async def headroom(self, needed: Decimal, *, fresh_after: datetime | None = None) -> Funds:
        """The shared figure: the balance re-read when older than the TTL (one call), the
        whole key list only when the figure is unknown or too short for ``needed``.

        A "not enough" answer is always a fresh measurement, so an order never waits
        for funds on a drifted figure. ``fresh_after``: a figure measured since then counts
        as fresh even when short (a re-check of many waiting orders measures once; the
        raises made since are booked into the figure).
        """
        known = self._known
        if known is None:
            return await self.measure()
        if not self._balance_read and (
            known.balance_at is None
            or (utcnow() - known.balance_at).total_seconds() >= self._funds.ttl
        ):
            known = await self._read_balance(known)
        if needed <= known.headroom or (
            fresh_after is not None
            and known.measured_at is not None
            and known.measured_at >= fresh_after
        ):
            return known
        return await self.measure()

    async def _read_balance(self, known: Funds) -> Funds:
        """Re-read the balance (one call) and share it (fenced by the lease)."""
        read_at = utcnow()
        credits = await self._funds.openrouter.credits()
        async with self._funds.sessions() as session, session.begin():
            await self._funds.fenced(
                session, self.token, available=credits.balance, balance_at=read_at
            )
        self._known = Funds(credits.balance, known.committed, known.measured_at, read_at)
        self.measured = True
        return self._known

    async def measure(self) -> Funds:
        """Measure now and store the figure for every replica (fenced by the lease)."""
        measured = await self._funds.measure()
        async with self._funds.sessions() as session, session.begin():
            await self._funds.fenced(
                session,
                self.token,
                measured_at=measured.measured_at,
                available=measured.available,
                committed=measured.committed,
                balance_at=measured.balance_at,
                generation=FundsLedger.generation + 1,
            )
        self._known = measured
        self.measured = True
        return measured

    async def confirm(self, session: AsyncSession) -> None:
        """Re-assert the lease in the caller's transaction, right before the PATCH."""
        await self._funds.fenced(session, self.token)
        self.measured = False

    def spent(self, amount: Decimal) -> None:
        """A PATCH raised limits by ``amount``; booked into the shared figure on release."""
        self.booked += amount

    def forget(self) -> None:
        """A PATCH whose outcome is unknown: the next holder measures afresh."""
        self.unsure = True
