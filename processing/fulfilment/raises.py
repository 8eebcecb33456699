"""Raising buyers' key limits in batches, one funds lease per batch.

Every raise must be checked against the operator's headroom and booked into it while
the funds lease is held (processing/funds.py), or two raises could spend the same
headroom. Taking that lease once per order serialised every delivery of every buyer
behind four transactions and a PATCH (~53 ms each under load). Here the deliveries
that reach that point together form a batch: the lease is taken once, each raise is
judged in queue order against the headroom less what the batch already booked, the
buyers' leases and the funds lease are re-asserted in one transaction, the PATCHes
(one per buyer, different keys) go out concurrently, and the lease is let go with the
batch's raises booked. One batch runs at a time in a process; the lease orders
batches across replicas. No transaction is open during a PATCH.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db.models import Order, OrderStatus, User
from processing.fulfilment.leasing import LeaseLost
from processing.funds import Funds, FundsHold, SharedFunds
from services.errors import OpenRouterError
from services.openrouter import KeyInfo, OpenRouterClient

log = logging.getLogger(__name__)

# Raises judged under one lease. Their PATCHes go out at once, so a batch takes about
# one PATCH with its retries, which the funds lease outlasts (docs/reliability.md).
MAX_BATCH = 64


@dataclass
class Raise:
    """One delivery asking to raise its buyer's key to ``target`` (``needed`` of it new)."""

    user_id: int
    order_id: int
    token: str  # the buyer's lease
    key_hash: str
    target: Decimal
    needed: Decimal
    paid_at: datetime | None
    told: Decimal | None  # the top-up the admins were last told for this order
    fresh_after: datetime | None = None
    done: asyncio.Future[KeyInfo | None] = field(default_factory=lambda: _future())

    def queue_key(self) -> tuple[float, int]:
        """Paid earlier goes first (the order id breaks ties), as in the funds queue."""
        return (self.paid_at.timestamp() if self.paid_at else float("inf"), self.order_id)


def _future() -> asyncio.Future[KeyInfo | None]:
    return asyncio.get_running_loop().create_future()


Outcomes = dict[int, KeyInfo | BaseException | None]  # order id -> how its raise ended

Waiting = tuple[int, datetime | None, Decimal | None]  # an order waiting: id, paid_at, need

# Records that an order waits for funds (the buyer's lease fenced); run inside the
# batch so the next batch's queue sees it.
WaitRecorder = Callable[[Raise, Decimal, Funds], Awaitable[None]]


class RaiseBatcher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        reads: async_sessionmaker[AsyncSession],
        openrouter: OpenRouterClient,
        funds: SharedFunds,
        lease: Callable[[], datetime],
        record_wait: WaitRecorder,
    ) -> None:
        self.sessions = sessions
        self.reads = reads
        self.openrouter = openrouter
        self.funds = funds
        self.lease_until = lease
        self.record_wait = record_wait
        self._pending: list[Raise] = []
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, request: Raise) -> KeyInfo | None:
        """The key after the PATCH, or None when the order now waits for funds.

        Raises ``OpenRouterError`` (the PATCH failed or its outcome is unknown; funds
        busy) or ``LeaseLost``."""
        self._pending.append(request)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        # Shielded: a cancelled delivery must not cancel the batch other buyers wait on.
        return await asyncio.shield(request.done)

    async def _run(self) -> None:
        while self._pending:
            batch: list[Raise] = []  # taken when the lease is (see _batch)
            outcomes: Outcomes = {}
            try:
                await self._batch(batch, outcomes)
            except BaseException as exc:
                if not batch:  # failed before the lease: the next batch in line gets it
                    batch[:] = self._take()
                # Nothing is reported as done unless the lease was let go with the raises
                # booked: then the deliveries retry, and an absolute limit cannot double.
                outcomes = {
                    r.order_id: o
                    for r in batch
                    if isinstance(o := outcomes.get(r.order_id), BaseException)
                }
                error = _as_error(exc)
                for request in batch:
                    outcomes.setdefault(request.order_id, error)
                if not isinstance(exc, Exception):
                    _settle(batch, outcomes)
                    # Stopping: whoever waits to join a batch retries after a restart.
                    waiting, self._pending = self._pending, []
                    _settle(waiting, {r.order_id: error for r in waiting})
                    raise
            _settle(batch, outcomes)

    def _take(self) -> list[Raise]:
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        batch.sort(key=Raise.queue_key)
        return batch

    async def _batch(self, batch: list[Raise], outcomes: Outcomes) -> None:
        """``batch`` is filled in the transaction that takes the lease: deliveries that
        arrive while the balance is read or the lease awaited join it."""
        ready: list[Raise] = []
        queue: list[Waiting] = []

        async def prepare(session: AsyncSession) -> None:
            batch[:] = self._take()
            # In the transaction that takes the funds lease: the funds queue outside this
            # batch, and every buyer's lease re-asserted (judging is in memory, so unless
            # a measurement goes over the network first, this is "right before the PATCH").
            queue[:] = await _waiting_outside(session, batch)
            ready[:] = await self._renew_buyers(session, batch, outcomes)

        # The balance (GET /credits) is read once for this batch, right before the funds
        # lease and not under it (SharedFunds.hold says why that is as safe). With
        # FUNDS_BALANCE_TTL_SECONDS > 0 the operator allows reuse, and the holder reads
        # it when due, as before.
        fresh_balance = self.funds.ttl <= 0
        async with self.funds.hold(then=prepare, read_balance=fresh_balance) as hold:
            approved = await self._judge(hold, ready, _ahead(queue), outcomes)
            if approved and hold.measured:
                approved = await self._confirm(hold, approved, outcomes)
            await asyncio.gather(*(self._patch(hold, r, outcomes) for r in approved))

    async def _judge(
        self,
        hold: FundsHold,
        batch: list[Raise],
        ahead_of: Callable[[Raise], Decimal],
        outcomes: Outcomes,
    ) -> list[Raise]:
        """Judge each raise in queue order; record the ones that must wait."""
        approved: list[Raise] = []
        waited = Decimal(0)  # needs of this batch's orders sent to wait, ahead of later ones
        for request in batch:
            ahead = (ahead_of(request) + waited) if request.needed else Decimal(0)
            wanted = request.needed + ahead
            # What this batch already booked is not yet on any key OpenRouter lists, so
            # it is subtracted from whatever figure (cached or fresh) is used.
            funds = await hold.headroom(wanted + hold.booked, fresh_after=request.fresh_after)
            if wanted > funds.headroom - hold.booked:
                shown = Funds(funds.available, funds.committed + hold.booked, funds.measured_at)
                try:
                    await self.record_wait(request, ahead, shown)
                except Exception as exc:
                    outcomes[request.order_id] = exc
                else:
                    outcomes[request.order_id] = None
                waited += request.needed
                continue
            hold.spent(request.needed)
            approved.append(request)
        return approved

    async def _renew_buyers(
        self, session: AsyncSession, requests: list[Raise], outcomes: Outcomes
    ) -> list[Raise]:
        """Re-assert each buyer's lease; one lost gets ``LeaseLost`` and raises nothing.

        A worker that stalled past its buyer's lease may have been overtaken by one that
        delivered more; its older, lower absolute limit would take credit back."""
        kept: list[Raise] = []
        until = self.lease_until()
        for request in requests:
            result = await session.execute(
                update(User)
                .where(User.id == request.user_id, User.lease_owner == request.token)
                .values(lease_until=until)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                kept.append(request)
            else:
                outcomes[request.order_id] = LeaseLost()
        return kept

    async def _confirm(
        self, hold: FundsHold, approved: list[Raise], outcomes: Outcomes
    ) -> list[Raise]:
        """Both leases again, right before the PATCHes, after a measurement took time."""
        async with self.sessions() as session, session.begin():
            kept = await self._renew_buyers(session, approved, outcomes)
            await hold.confirm(session)
        for request in approved:
            if request not in kept:
                hold.spent(-request.needed)  # not raised after all
        return kept

    async def _patch(
        self,
        hold: FundsHold,
        request: Raise,
        outcomes: Outcomes,
    ) -> None:
        try:
            updated = await self.openrouter.set_key_limit(request.key_hash, request.target)
        except OpenRouterError as exc:
            hold.forget()  # it may have landed: measure afresh next time
            outcomes[request.order_id] = exc
            return
        if updated.limit is None or updated.limit != request.target:
            hold.forget()
            outcomes[request.order_id] = OpenRouterError(
                "openrouter",
                f"limit after PATCH is {updated.limit}, expected {request.target}",
                transient=True,
            )
            return
        outcomes[request.order_id] = updated


async def _waiting_outside(session: AsyncSession, batch: list[Raise]) -> list[Waiting]:
    """The orders waiting for funds that are not in this batch (queue.queued_before)."""
    rows = await session.execute(
        select(Order.id, Order.paid_at, Order.funds_needed_usd).where(
            Order.status.in_([OrderStatus.AWAITING_FUNDS.value, OrderStatus.FULFILLING.value]),
            Order.funds_needed_usd.is_not(None),
            Order.id.not_in([request.order_id for request in batch]),
        )
    )
    return [(order_id, paid_at, need) for order_id, paid_at, need in rows.all()]


def _ahead(
    rows: list[Waiting],
) -> Callable[[Raise], Decimal]:
    def ahead(request: Raise) -> Decimal:
        # The same "ahead" as the SQL of queue.queued_before (a NULL paid_at there
        # compares false).
        total = Decimal(0)
        for order_id, paid_at, need in rows:
            if request.paid_at is None:
                before = order_id < request.order_id
            elif paid_at is None:
                before = False
            else:
                before = (paid_at, order_id) < (request.paid_at, request.order_id)
            if before:
                total += need or Decimal(0)
        return total

    return ahead


def _settle(batch: list[Raise], outcomes: Outcomes) -> None:
    for request in batch:
        if request.done.done():
            continue
        outcome = outcomes.get(request.order_id)
        if isinstance(outcome, BaseException):
            request.done.set_exception(outcome)
        else:
            request.done.set_result(outcome)


def _as_error(exc: BaseException) -> BaseException:
    if isinstance(exc, OpenRouterError | LeaseLost):
        return exc
    # Cancelled (shutdown) or an unexpected error: the deliveries retry later.
    return OpenRouterError("funds", f"the funds batch failed: {exc!r}", transient=True)
