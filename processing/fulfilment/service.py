"""The fulfilment orchestrator: jobs, one buyer at a time, one order at a time."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from core.metrics import Metrics
from db import repo
from db.models import ApiKey, Order, OrderStatus
from db.status import CLAIMABLE
from processing.fulfilment.keys import KEY_NAME_PREFIX, KeyCreation
from processing.fulfilment.leasing import LeaseLost
from processing.fulfilment.queue import (
    FundsRecheck,
    count_orders,
    due_for_fulfilment,
    next_for_buyer,
)
from processing.fulfilment.raises import Raise, RaiseBatcher
from processing.fulfilment.records import AttemptRecords
from processing.funds import Funds, SharedFunds
from services.errors import OpenRouterError
from services.logcontext import bind
from services.notify import Notifier
from services.openrouter import OpenRouterClient
from services.vault import KeyVault

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """An order claimed for one attempt, with what the claiming transaction read."""

    order_id: int
    base: Decimal
    attempts: int
    told: Decimal | None
    paid_at: datetime | None
    delivered_sum: Decimal
    key_row: ApiKey | None
    orphan_possible: bool | None  # key_intent's answer, when the claim recorded it


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
        reads: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        self.sessions = sessions
        # Read-only lookups (which buyer/order is due, the funds queue) need no write
        # lock: on SQLite they read a snapshot instead of queueing behind the writer.
        self.reads = reads or sessions
        self.metrics = metrics or Metrics()
        self.openrouter = openrouter
        self.vault = vault
        self.notifier = notifier
        self.lease = lease
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.funds_recheck = funds_recheck
        # Buyers fulfilled at once, by the kicks and the job together (db/engine.py
        # Admission): 1,000 payments confirmed at once must not each take a pool
        # connection and wait out its timeout (a failed attempt, retried much later).
        self.concurrency = concurrency
        self._workers = asyncio.Semaphore(concurrency)
        self.shared_funds = SharedFunds(
            sessions,
            openrouter,
            key_prefix=KEY_NAME_PREFIX,
            lease=funds_lease,
            ttl=funds_ttl,
            remeasure=funds_remeasure,
        )
        # No process-wide lock: deliveries meet only in the funds batch (raises.py).
        self._raises = RaiseBatcher(
            sessions,
            self.reads,
            openrouter,
            self.shared_funds,
            lambda: utcnow() + self.lease,
            self._record_wait,
        )
        self._local: dict[int, asyncio.Lock] = {}
        self._again: set[int] = set()
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
            async with self._workers:
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
        async with self.reads() as session:
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
        # buyer whose OpenRouter calls hang must not hold up everyone else. The kicks
        # share the gate, so the two together stay within the pool.

        async def one(user_id: int) -> None:
            async with self._workers:
                await self.fulfil_user(user_id)

        await asyncio.gather(*(one(user_id) for user_id in user_ids))
        return len(user_ids)

    async def recheck_due(self) -> int:
        """Job (every FUNDS_RECHECK_SECONDS): ``resume_waiting`` when an order waits.

        Otherwise the key list is re-read only when older than FUNDS_REMEASURE_SECONDS,
        here rather than in a delivery, so a delivery costs no listing (processing/funds.py).
        """
        async with self.reads() as session:
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
            busy = self._local.get(user_id)
            if busy is not None:
                # This process is finishing an attempt for the buyer (its funds batch is
                # letting go): wait, so the re-check judges the order rather than skip it.
                async with busy:
                    pass
            await self.fulfil_user(user_id, funds_fresh_after=since)
        async with self.reads() as session:
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
            # This process is on it; it looks again once done, so an order paid just
            # as it let go of the buyer does not wait for the next fulfilment job.
            self._again.add(user_id)
            return
        async with lock:
            try:
                while True:
                    self._again.discard(user_id)
                    await self._fulfil_leased(user_id, funds_fresh_after)
                    if user_id not in self._again:
                        break
            finally:
                self._again.discard(user_id)
                self._local.pop(user_id, None)

    async def _fulfil_leased(self, user_id: int, funds_fresh_after: datetime | None) -> None:
        token = uuid.uuid4().hex
        # Taking the buyer's lease and claiming the first order is one transaction; so
        # are recording a delivery and claiming the next order (or letting go).
        async with self.sessions() as session, session.begin():
            if not await self._claim_user_in(session, user_id, token):
                return
            attempt = await self._start_next_or_release(session, user_id, token)
        held = attempt is not None
        try:
            while attempt is not None:
                with bind(order_id=attempt.order_id, user_id=user_id):
                    attempt, held = await self._fulfil_order(
                        user_id, attempt, token, funds_fresh_after
                    )
        except LeaseLost:
            log.warning("lease_lost user=%s", user_id)
        finally:
            if held:
                await self._release_user(user_id, token)

    async def _start_next_or_release(
        self, session: AsyncSession, user_id: int, token: str
    ) -> Attempt | None:
        """Claim the buyer's next due order in the caller's transaction, or, when none is
        due, let go of the buyer's lease in it."""
        now = utcnow()
        # Bounded: each pass either claims an order or sees one that left the due set.
        for _ in range(8):
            order_id = (
                await session.execute(
                    select(Order.id)
                    .where(Order.user_id == user_id, next_for_buyer(now))
                    .order_by(Order.id)
                    .limit(1)
                )
            ).scalar_one_or_none()
            if order_id is None:
                break
            attempt = await self._start(session, user_id, order_id, token)
            if attempt is not None:
                return attempt
        await self._let_go(session, user_id, token)
        return None

    async def _start(
        self, session: AsyncSession, user_id: int, order_id: int, token: str
    ) -> Attempt | None:
        """Move the order to ``fulfilling`` under this worker (compare-and-set + event)."""
        order = await session.get(Order, order_id, populate_existing=True)
        assert order is not None
        previous = await repo.transition(
            session,
            order_id,
            CLAIMABLE,
            OrderStatus.FULFILLING,
            actor=f"worker:{token[:8]}",
            kind="fulfilment_started",
            detail={"attempt": order.attempts + 1},
            where={"user_id": user_id},
            lease_owner=token,
            lease_until=utcnow() + self.lease,
            attempts=Order.attempts + 1,
        )
        if previous is None:
            return None
        key_row = await repo.get_api_key(session, user_id)
        return Attempt(
            order_id=order_id,
            base=order.base_usd,
            attempts=order.attempts + 1,
            told=order.funds_topup_usd,
            paid_at=order.paid_at,
            delivered_sum=await repo.delivered_base_sum(session, user_id),
            key_row=key_row,
            # A new buyer's key is about to be created: its intent is recorded here
            # rather than in a transaction of its own.
            orphan_possible=(
                None if key_row else await self.key_intent(session, user_id, order_id, token)
            ),
        )

    # ------------------------------------------------------------- one order
    async def _fulfil_order(
        self,
        user_id: int,
        attempt: Attempt,
        token: str,
        funds_fresh_after: datetime | None = None,
    ) -> tuple[Attempt | None, bool]:
        """One attempt. -> (the buyer's next order, already claimed, if this one was
        delivered; whether this worker still holds the buyer's lease)."""
        order_id = attempt.order_id
        target = attempt.delivered_sum + attempt.base
        try:
            key_hash, new_key = await self._ensure_key(
                user_id, order_id, attempt.key_row, token, orphan_possible=attempt.orphan_possible
            )
            created = new_key is not None
            # A key made just now is as POST /keys described it; only an older one is read.
            current = new_key or await self.openrouter.get_key(key_hash)
            # Only the part of the target not yet on the key needs fresh funds: after a
            # crash between PATCH and commit the key already carries this order.
            needed = max(Decimal(0), target - (current.limit or Decimal(0)))
            # Balance check, PATCH and booking of the raise happen under the funds lease,
            # in a batch with the other deliveries ready now (raises.py): two checks
            # against the same headroom never both pass, here or on another replica.
            updated = await self._raises.submit(
                Raise(
                    user_id=user_id,
                    order_id=order_id,
                    token=token,
                    key_hash=key_hash,
                    target=target,
                    needed=needed,
                    paid_at=attempt.paid_at,
                    told=attempt.told,
                    fresh_after=funds_fresh_after,
                )
            )
        except OpenRouterError as exc:
            await self._attempt_failed(
                order_id, user_id, token, attempt.attempts, exc, release=True
            )
            return None, False
        if updated is None:
            return None, False  # waits for funds (recorded, the buyer let go, in the batch)

        async def then(session: AsyncSession) -> Attempt | None:
            return await self._start_next_or_release(session, user_id, token)

        following = await self._delivered(
            order_id, user_id, token, key_hash, target, updated, created, then=then
        )
        return following, following is not None

    async def _record_wait(self, request: Raise, ahead: Decimal, funds: Funds) -> None:
        await self._await_funds(
            request.order_id,
            request.user_id,
            request.token,
            request.told,
            request.needed,
            ahead,
            funds,
            release=True,
        )

    async def funds(self) -> Funds:
        """Operator balance vs what buyer keys may still spend, measured now (SPEC §2)."""
        return await self.shared_funds.measure()
