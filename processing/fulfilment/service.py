"""The fulfilment orchestrator: jobs, one buyer at a time, one order at a time."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from core.metrics import Metrics
from db import repo
from db.models import Order, OrderStatus
from db.status import CLAIMABLE
from processing.fulfilment.keys import KEY_NAME_PREFIX, KeyCreation
from processing.fulfilment.leasing import LeaseLost
from processing.fulfilment.queue import (
    FundsRecheck,
    count_orders,
    due_for_fulfilment,
    next_for_buyer,
    queued_before,
)
from processing.fulfilment.records import AttemptRecords
from processing.funds import Funds, SharedFunds
from services.errors import OpenRouterError
from services.logcontext import bind
from services.notify import Notifier
from services.openrouter import OpenRouterClient
from services.vault import KeyVault

log = logging.getLogger(__name__)


class Fulfilment(AttemptRecords, KeyCreation):
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        openrouter: OpenRouterClient,
        vault: KeyVault,
        notifier: Notifier,
        *,
        lease: timedelta = timedelta(minutes=5),
        max_attempts: int = 8,
        retry_base: timedelta = timedelta(seconds=5),
        funds_recheck: timedelta = timedelta(seconds=30),
        concurrency: int = 4,
        # Seconds a balance read is reused (FUNDS_BALANCE_TTL_SECONDS): 0 reads GET /credits
        # on every check, so usage outside buyers' keys is never missed (processing/funds.py).
        funds_ttl: float = 0.0,
        funds_lease: timedelta = timedelta(seconds=45),
        funds_remeasure: timedelta = timedelta(minutes=15),
        metrics: Metrics | None = None,
    ) -> None:
        self.sessions = sessions
        self.metrics = metrics or Metrics()
        self.openrouter = openrouter
        self.vault = vault
        self.notifier = notifier
        self.lease = lease
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.funds_recheck = funds_recheck
        self.concurrency = concurrency
        self._commit_lock = asyncio.Lock()
        self.shared_funds = SharedFunds(
            sessions,
            openrouter,
            key_prefix=KEY_NAME_PREFIX,
            lease=funds_lease,
            ttl=funds_ttl,
            remeasure=funds_remeasure,
        )
        self._local: dict[int, asyncio.Lock] = {}
        # Nudges the outbox so the buyer hears at once; the app sets it once the outbox
        # exists (built after this).
        self.wake: Callable[[], None] = lambda: None
        self._kicks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ kick
    async def kick(self, user_id: int) -> None:
        """A payment was confirmed: fulfil now in the background (the job would too)."""
        self.wake()
        task = asyncio.create_task(self._kicked(user_id))
        self._kicks.add(task)
        task.add_done_callback(self._kicks.discard)

    async def _kicked(self, user_id: int) -> None:
        try:
            await self.fulfil_user(user_id)
        except Exception:
            log.exception("fulfil_failed user=%s", user_id)
        self.wake()

    async def stop(self) -> None:
        """Cancel the kicks in flight; the fulfilment job finishes them after a restart."""
        for task in list(self._kicks):
            task.cancel()
        await asyncio.gather(*self._kicks, return_exceptions=True)

    # ------------------------------------------------------------------ jobs
    async def run_due(self) -> int:
        """Job: fulfil every buyer with a paid or stalled order.

        Orders waiting for funds are left to ``resume_waiting``, which measures the
        balance once for all of them instead of once per order."""
        now = utcnow()
        async with self.sessions() as session:
            user_ids = (
                (
                    await session.execute(
                        select(Order.user_id).where(due_for_fulfilment(now)).distinct()
                    )
                )
                .scalars()
                .all()
            )
        # Buyers are independent (each has its own lease), so a few go at once: one
        # buyer whose OpenRouter calls hang must not hold up everyone else.
        gate = asyncio.Semaphore(self.concurrency)

        async def one(user_id: int) -> None:
            async with gate:
                await self.fulfil_user(user_id)

        await asyncio.gather(*(one(user_id) for user_id in user_ids))
        return len(user_ids)

    async def recheck_due(self) -> int:
        """Job (every FUNDS_RECHECK_SECONDS): ``resume_waiting`` when an order waits.

        Otherwise the key list is re-read only when older than FUNDS_REMEASURE_SECONDS,
        here rather than in a delivery, so a delivery costs no listing (processing/funds.py).
        """
        async with self.sessions() as session:
            waiting = await count_orders(session, Order.status == OrderStatus.AWAITING_FUNDS.value)
        if not waiting:
            await self.shared_funds.relist_if_due()
            return 0
        return (await self.resume_waiting()).delivered

    async def resume_waiting(self) -> FundsRecheck:
        """Re-measure the operator's balance now and retry every order waiting for funds.

        Run every FUNDS_RECHECK_SECONDS (so a top-up is acted on within that time) and by
        an admin's `🔄 Re-check balance`. One measurement serves the whole queue: buyers
        go one at a time in queue order, each raise booked into the shared
        figure, so the head of the queue is served before anyone behind it is judged.
        """
        since = utcnow()
        funds = await self.shared_funds.remeasure()
        async with self.sessions() as session, session.begin():
            waiting = (
                await session.execute(
                    select(Order.id, Order.user_id)
                    .where(Order.status == OrderStatus.AWAITING_FUNDS.value)
                    .order_by(Order.paid_at, Order.id)
                )
            ).all()
            # Due now. Only the retry time moves: the status changes when a worker claims it.
            await session.execute(
                update(Order)
                .where(Order.status == OrderStatus.AWAITING_FUNDS.value)
                .values(next_attempt_at=since)
            )
        for user_id in dict.fromkeys(user_id for _, user_id in waiting):  # queue order
            await self.fulfil_user(user_id, funds_fresh_after=since)
        async with self.sessions() as session:
            delivered = await count_orders(
                session,
                Order.id.in_([order_id for order_id, _ in waiting]),
                Order.status == OrderStatus.DELIVERED.value,
            )
            left = await count_orders(session, Order.status == OrderStatus.AWAITING_FUNDS.value)
        return FundsRecheck(funds, delivered, left)

    async def fulfil_user(self, user_id: int, *, funds_fresh_after: datetime | None = None) -> None:
        """Fulfil this buyer's due orders one by one, holding the buyer's lease.

        ``funds_fresh_after``: see ``FundsHold.headroom``."""
        lock = self._local.setdefault(user_id, asyncio.Lock())
        if lock.locked():
            return  # this process is already on it; it will pick up new orders too
        async with lock:
            token = uuid.uuid4().hex
            if not await self._claim_user(user_id, token):
                return
            try:
                while True:
                    order_id = await self._next_order(user_id)
                    if order_id is None:
                        break
                    with bind(order_id=order_id, user_id=user_id):
                        done = await self._fulfil_order(user_id, order_id, token, funds_fresh_after)
                    if not done:
                        break
            except LeaseLost:
                log.warning("lease_lost user=%s", user_id)
            finally:
                await self._release_user(user_id, token)
                self._local.pop(user_id, None)

    async def _next_order(self, user_id: int) -> int | None:
        now = utcnow()
        async with self.sessions() as session:
            return (
                await session.execute(
                    select(Order.id)
                    .where(Order.user_id == user_id, next_for_buyer(now))
                    .order_by(Order.id)
                    .limit(1)
                )
            ).scalar_one_or_none()

    # ------------------------------------------------------------- one order
    async def _fulfil_order(
        self, user_id: int, order_id: int, token: str, funds_fresh_after: datetime | None = None
    ) -> bool:
        """One attempt. True when the order reached a resting state and the next may go."""
        async with self.sessions() as session, session.begin():
            await self._renew(session, user_id, token)
            order = await session.get(Order, order_id)
            assert order is not None
            previous = await repo.transition(
                session,
                order_id,
                CLAIMABLE,
                OrderStatus.FULFILLING,
                actor=f"worker:{token[:8]}",
                kind="fulfilment_started",
                detail={"attempt": order.attempts + 1},
                lease_owner=token,
                lease_until=utcnow() + self.lease,
                attempts=Order.attempts + 1,
            )
            if previous is None:
                return True
            delivered_sum = await repo.delivered_base_sum(session, user_id)
            key_row = await repo.get_api_key(session, user_id)
            base = order.base_usd
            attempts = order.attempts + 1
            told = order.funds_topup_usd
            paid_at = order.paid_at
        target = delivered_sum + base
        try:
            key_hash, new_key = await self._ensure_key(user_id, order_id, key_row, token)
            created = new_key is not None
            # A key made just now is as POST /keys described it; only an older one is read.
            current = new_key or await self.openrouter.get_key(key_hash)
            # Balance check, PATCH and booking of the raise as one section: buyers are
            # fulfilled concurrently here and on other replicas, and two checks against
            # the same headroom must not both pass. The process lock keeps this
            # process's deliveries from polling the shared lease against each other.
            async with self._commit_lock, self.shared_funds.hold() as funds_hold:
                # Only the part of the target not yet on the key needs fresh funds: after a
                # crash between PATCH and commit the key already carries this order.
                needed = max(Decimal(0), target - (current.limit or Decimal(0)))
                ahead = (
                    await queued_before(self.sessions, order_id, paid_at) if needed else Decimal(0)
                )
                funds = await funds_hold.headroom(needed + ahead, fresh_after=funds_fresh_after)
                if needed + ahead > funds.headroom:
                    await self._await_funds(order_id, user_id, token, told, needed, ahead, funds)
                    return False
                # Re-assert both leases just before the write that moves money. A worker
                # that stalled past its user lease may have been overtaken by one that
                # delivered more of this buyer's orders; PATCHing its older, lower absolute
                # limit would take credit back. The PATCH itself is bounded by the client's
                # timeouts, which both leases must outlast (docs/reliability.md).
                async with self.sessions() as session, session.begin():
                    await self._renew(session, user_id, token)
                    await funds_hold.confirm(session)
                try:
                    updated = await self.openrouter.set_key_limit(key_hash, target)
                except OpenRouterError:
                    funds_hold.forget()  # it may have landed: measure afresh next time
                    raise
                if updated.limit is None or updated.limit != target:
                    funds_hold.forget()
                    raise OpenRouterError(
                        "openrouter",
                        f"limit after PATCH is {updated.limit}, expected {target}",
                        transient=True,
                    )
                funds_hold.spent(needed)
        except OpenRouterError as exc:
            await self._attempt_failed(order_id, user_id, token, attempts, exc)
            return False
        await self._delivered(order_id, user_id, token, key_hash, target, updated, created)
        return True

    async def funds(self) -> Funds:
        """Operator balance vs what buyer keys may still spend, measured now (SPEC §2)."""
        return await self.shared_funds.measure()
