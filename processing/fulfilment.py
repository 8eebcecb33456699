"""Fulfilment (SPEC §2): turn a paid order into OpenRouter credit on the buyer's key.

Buying = PATCHing the buyer's key limit to the ABSOLUTE sum of the base cost of their
delivered orders plus this one, computed from our ledger; a retry PATCHes the same
number, so no retry can double-credit. All orders of one buyer raise one key, so a
buyer's fulfilment is serialised by a lease on the user row (fencing token = lease
owner). No transaction is open during an OpenRouter call:
claim (commit) → key/balance/PATCH over HTTP → record (commit).

When the operator's headroom does not cover an order, it waits (``awaiting_funds``)
and the admin group is told the exact top-up (SPEC §2). Waiting orders form one queue,
in the order they were paid: an order goes only when the headroom covers its own need
plus the needs of the orders waiting before it. So the top-up told for an order is
``its need + the needs queued before it − headroom`` (a negative headroom, a deficit
the operator already has, is part of it): paying exactly that lets this order and every
order before it through, and a newer order cannot take the money meant for an older one.
When that figure changes while the order waits (an order before it went, the deficit
grew), the new figure is told once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.callbacks import MenuCb
from core.clock import utcnow
from core.money import ceil_cents, format_tokens, format_usd
from db import repo
from db.models import ApiKey, Order, OrderEvent, OrderStatus, User
from processing.funds import Funds, SharedFunds
from services.errors import OpenRouterError
from services.logcontext import bind
from services.notify import API_KEY_SLOT, Notifier
from services.openrouter import KeyInfo, OpenRouterClient
from services.quota import last_known
from services.vault import KeyVault

log = logging.getLogger(__name__)

KEY_NAME_PREFIX = "tg-"
# Buttons under a delivery: buy more, see the quota (callback data of core.callbacks.MenuCb).
AFTER_DELIVERY = [
    [
        ("menu.ai_tokens", MenuCb(action="tokens").pack()),
        ("menu.quota", MenuCb(action="quota").pack()),
    ]
]
KEY_CREATE_STARTED = "key_create_started"
CLAIMABLE = (OrderStatus.PAID, OrderStatus.AWAITING_FUNDS, OrderStatus.FULFILLING)


async def _count(session: AsyncSession, *where: Any) -> int:
    return int(
        (await session.execute(select(func.count()).select_from(Order).where(*where))).scalar_one()
    )


def key_name(user_id: int) -> str:
    return f"{KEY_NAME_PREFIX}{user_id}"


class LeaseLost(Exception):
    """Another worker owns this buyer now; stop without touching anything else."""


@dataclass(frozen=True)
class FundsRecheck:
    """What a re-check of the waiting orders found and did."""

    funds: Funds
    delivered: int  # of the orders that were waiting
    waiting: int  # still waiting for funds


class BuyerBusy(Exception):
    """A delivery (or another change) holds this buyer's lease right now; try again later."""


class Fulfilment:
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
        funds_ttl: float = 10.0,
        funds_lease: timedelta = timedelta(seconds=45),
    ) -> None:
        self.sessions = sessions
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
            sessions, openrouter, key_prefix=KEY_NAME_PREFIX, lease=funds_lease, ttl=funds_ttl
        )
        self._local: dict[int, asyncio.Lock] = {}

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
                        select(Order.user_id)
                        .where(
                            or_(
                                (Order.status == OrderStatus.PAID.value)
                                & (
                                    (Order.next_attempt_at.is_(None))
                                    | (Order.next_attempt_at <= now)
                                ),
                                (Order.status == OrderStatus.FULFILLING.value)
                                & (Order.lease_until < now),
                            )
                        )
                        .distinct()
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

        Measuring lists every key, so nothing is measured while no order waits."""
        async with self.sessions() as session:
            if not await _count(session, Order.status == OrderStatus.AWAITING_FUNDS.value):
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
            delivered = await _count(
                session,
                Order.id.in_([order_id for order_id, _ in waiting]),
                Order.status == OrderStatus.DELIVERED.value,
            )
            left = await _count(session, Order.status == OrderStatus.AWAITING_FUNDS.value)
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

    # --------------------------------------------------------------- leasing
    async def _claim_user(self, user_id: int, token: str) -> bool:
        now = utcnow()
        async with self.sessions() as session, session.begin():
            result = await session.execute(
                update(User)
                .where(User.id == user_id, (User.lease_until.is_(None)) | (User.lease_until < now))
                .values(lease_owner=token, lease_until=now + self.lease)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def _renew(self, session: AsyncSession, user_id: int, token: str) -> None:
        result = await session.execute(
            update(User)
            .where(User.id == user_id, User.lease_owner == token)
            .values(lease_until=utcnow() + self.lease)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise LeaseLost()

    async def _leave_fulfilling(
        self,
        session: AsyncSession,
        order_id: int,
        token: str,
        to: OrderStatus,
        *,
        kind: str,
        detail: dict[str, Any],
        **values: Any,
    ) -> None:
        """Move an order this worker holds out of ``fulfilling`` and drop its lease.

        The compare-and-set is fenced by the lease token: if another worker took the
        order over meanwhile, nothing changes and ``LeaseLost`` rolls the transaction back.
        """
        moved = await repo.transition(
            session,
            order_id,
            [OrderStatus.FULFILLING],
            to,
            actor=f"worker:{token[:8]}",
            kind=kind,
            detail=detail,
            where={"lease_owner": token},
            lease_owner=None,
            lease_until=None,
            **values,
        )
        if moved is None:
            raise LeaseLost()

    @contextlib.asynccontextmanager
    async def buyer_lease(self, user_id: int, *, wait: float = 3.0) -> AsyncIterator[str]:
        """Hold the buyer's lease — the one deliveries take — for a change to their key
        made from outside fulfilment (a refund). Yields the fencing token; raises
        ``BuyerBusy`` when a delivery keeps it for longer than ``wait`` seconds."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait
        while not await self._claim_user(user_id, token):
            if time.monotonic() >= deadline:
                raise BuyerBusy()
            await asyncio.sleep(0.2)
        try:
            yield token
        finally:
            await self._release_user(user_id, token)

    async def renew(self, session: AsyncSession, user_id: int, token: str) -> None:
        """Re-assert the buyer's lease in the caller's transaction (``LeaseLost`` if gone)."""
        await self._renew(session, user_id, token)

    async def reassert_ledger(self, user_id: int, token: str) -> Decimal | None:
        """Set the buyer's key limit to the ledger (Σ base of delivered orders) and read
        it back. Returns the confirmed limit, or None when the buyer has no key.

        Used when an order leaves the ledger for good (refund, failure) after a PATCH
        whose outcome is unknown: it may have landed, and the buyer must not keep
        spending credit nobody paid for. Raises ``OpenRouterError`` when OpenRouter does
        not confirm the value: then the caller must record nothing.
        """
        async with self.sessions() as session, session.begin():
            await self._renew(session, user_id, token)  # right before the PATCH
            target = await repo.delivered_base_sum(session, user_id)
            key_row = await repo.get_api_key(session, user_id)
        if key_row is None:
            return None  # no key was ever stored, so no limit was ever raised
        key_hash = key_row.openrouter_hash
        try:
            await self.openrouter.set_key_limit(key_hash, target)
        except OpenRouterError as exc:
            if not exc.transient:
                raise
            # The answer may be lost with the change made: the read-back decides.
        info = await self.openrouter.get_key(key_hash)
        if info.limit is None or info.limit != target:
            raise OpenRouterError(
                "openrouter", f"key limit is {info.limit}, expected {target}", transient=True
            )
        async with self.sessions() as session, session.begin():
            await self._renew(session, user_id, token)
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_row.id)
                .values(limit_usd=target, updated_at=utcnow())
            )
        log.info("key_limit_reasserted user=%s limit=%s", user_id, target)
        return target

    async def _release_user(self, user_id: int, token: str) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(User)
                .where(User.id == user_id, User.lease_owner == token)
                .values(lease_owner=None, lease_until=None)
            )

    async def _next_order(self, user_id: int) -> int | None:
        now = utcnow()
        async with self.sessions() as session:
            return (
                await session.execute(
                    select(Order.id)
                    .where(
                        Order.user_id == user_id,
                        or_(
                            (Order.status == OrderStatus.PAID.value)
                            & ((Order.next_attempt_at.is_(None)) | (Order.next_attempt_at <= now)),
                            # Under the user lease no one else is working on it.
                            Order.status == OrderStatus.FULFILLING.value,
                            (Order.status == OrderStatus.AWAITING_FUNDS.value)
                            & ((Order.next_attempt_at.is_(None)) | (Order.next_attempt_at <= now)),
                        ),
                    )
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
            key_hash, created = await self._ensure_key(user_id, order_id, key_row, token)
            current = await self.openrouter.get_key(key_hash)
            # Balance check, PATCH and booking of the raise as one section: buyers are
            # fulfilled concurrently here and on other replicas, and two checks against
            # the same headroom must not both pass. The process lock keeps this
            # process's deliveries from polling the shared lease against each other.
            async with self._commit_lock, self.shared_funds.hold() as funds_hold:
                # Only the part of the target not yet on the key needs fresh funds: after a
                # crash between PATCH and commit the key already carries this order.
                needed = max(Decimal(0), target - (current.limit or Decimal(0)))
                ahead = await self._queued_before(order_id, paid_at) if needed else Decimal(0)
                funds = await funds_hold.headroom(needed + ahead, fresh_after=funds_fresh_after)
                if needed + ahead > funds.headroom:
                    await self._await_funds(
                        order_id, user_id, token, told, attempts, needed, ahead, funds
                    )
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

    async def _ensure_key(
        self, user_id: int, order_id: int, key_row: ApiKey | None, token: str
    ) -> tuple[str, bool]:
        """The buyer's key hash, creating the key once.

        Idempotent: an event is committed before ``POST /keys``; a later attempt that
        finds it but no stored key knows a crash may have left an orphan, and looks."""
        if key_row is not None:
            return key_row.openrouter_hash, False
        name = key_name(user_id)
        async with self.sessions() as session, session.begin():
            await self._renew(session, user_id, token)
            # Did an earlier attempt start creating this buyer's key? Only then can an
            # orphan exist, and only then is the whole key list worth reading.
            tried_before = (
                await session.execute(
                    select(OrderEvent.id)
                    .join(Order, Order.id == OrderEvent.order_id)
                    .where(Order.user_id == user_id, OrderEvent.kind == KEY_CREATE_STARTED)
                    .limit(1)
                )
            ).scalar_one_or_none() is not None
            repo.add_event(
                session,
                order_id,
                KEY_CREATE_STARTED,
                actor=f"worker:{token[:8]}",
                status=OrderStatus.FULFILLING.value,
                detail={"name": name},
            )
        orphans = await self.openrouter.find_keys_by_name(name) if tried_before else []
        for orphan in orphans:
            # A key with our buyer's name that we never stored: a crash after POST
            # /keys lost its plaintext. It was created with a zero limit, so nothing is
            # lost by deleting it; one with credit on it is left for the operator.
            if (orphan.limit or 0) == 0 and orphan.usage == 0:
                log.warning("orphan_key_deleted user=%s hash=%s", user_id, orphan.hash[:12])
                await self.openrouter.delete_key(orphan.hash)
            else:
                log.error("orphan_key_with_credit user=%s hash=%s", user_id, orphan.hash[:12])
        info, plaintext = await self.openrouter.create_key(name, Decimal("0"))
        now = utcnow()
        async with self.sessions() as session, session.begin():
            await self._renew(session, user_id, token)
            session.add(
                ApiKey(
                    user_id=user_id,
                    name=name,
                    openrouter_hash=info.hash,
                    label=info.label,
                    encrypted_key=self.vault.encrypt(plaintext),
                    limit_usd=Decimal("0.00"),
                    currency="USD",
                    created_at=now,
                    updated_at=now,
                    key_shown=False,
                )
            )
        log.info("key_created user=%s hash=%s", user_id, info.hash[:12])
        return info.hash, True

    async def _queued_before(self, order_id: int, paid_at: datetime | None) -> Decimal:
        """What the orders waiting for funds ahead of this one need (module docstring).

        Ahead = paid earlier (the order id breaks ties). An order waiting is
        ``awaiting_funds``, or ``fulfilling`` on a retry after waiting
        (``funds_needed_usd`` set): the one being retried right now keeps its place."""
        before = (
            Order.id < order_id
            if paid_at is None
            else or_(Order.paid_at < paid_at, and_(Order.paid_at == paid_at, Order.id < order_id))
        )
        async with self.sessions() as session:
            total = (
                await session.execute(
                    select(func.sum(Order.funds_needed_usd)).where(
                        before,
                        Order.status.in_(
                            [OrderStatus.AWAITING_FUNDS.value, OrderStatus.FULFILLING.value]
                        ),
                        Order.funds_needed_usd.is_not(None),
                    )
                )
            ).scalar_one_or_none()
        return Decimal(total or 0)

    async def funds(self) -> Funds:
        """Operator balance vs what buyer keys may still spend, measured now (SPEC §2)."""
        return await self.shared_funds.measure()

    # --------------------------------------------------------------- records
    async def _delivered(
        self,
        order_id: int,
        user_id: int,
        token: str,
        key_hash: str,
        target: Decimal,
        info: KeyInfo,
        created: bool,
    ) -> None:
        async with self.sessions() as session, session.begin():
            await self._renew(session, user_id, token)
            order = await session.get(Order, order_id)
            assert order is not None
            await self._leave_fulfilling(
                session,
                order_id,
                token,
                OrderStatus.DELIVERED,
                kind="delivered",
                detail={"key_hash": key_hash, "limit_usd": str(target)},
                delivered_at=utcnow(),
                next_attempt_at=None,
                last_error=None,
            )
            key_row = await repo.get_api_key(session, user_id)
            assert key_row is not None
            show_key = not key_row.key_shown
            # A new updated_at is a new version of the key row: every replica's /quota cache
            # misses on it (services/quota.py). The PATCH's answer becomes the last known
            # figures, shown if OpenRouter is down on the next /quota.
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_row.id)
                .values(
                    limit_usd=target,
                    updated_at=utcnow(),
                    key_shown=True,
                    **last_known(info, utcnow()),
                )
            )
            usage = info.usage
            remaining = (
                info.limit_remaining if info.limit_remaining is not None else (target - usage)
            )
            params: dict[str, Any] = {
                "order_id": order_id,
                "tokens": format_tokens(order.tokens),
                "model": order.model,
                "limit": format_usd(target),
                "used": format_usd(usage),
                "remaining": format_usd(remaining),
            }
            if show_key:
                await self.notifier.user(
                    session,
                    user_id,
                    "notify.delivered_new_key",
                    dedupe=f"delivered:{order_id}",
                    payload={"secret_key_of": user_id},
                    buttons=AFTER_DELIVERY,
                    api_key=API_KEY_SLOT,
                    **params,
                )
            else:
                await self.notifier.user(
                    session,
                    user_id,
                    "notify.delivered_topup",
                    dedupe=f"delivered:{order_id}",
                    buttons=AFTER_DELIVERY,
                    **params,
                )
        log.info(
            "delivered order=%s user=%s limit=%s new_key=%s", order_id, user_id, target, created
        )

    async def _await_funds(
        self,
        order_id: int,
        user_id: int,
        token: str,
        told: Decimal | None,
        attempts: int,
        needed: Decimal,
        ahead: Decimal,
        funds: Funds,
    ) -> None:
        # The real shortfall: a negative headroom is money the operator already owes the
        # keys, so it is topped up too (module docstring for ``ahead``).
        topup = ceil_cents(needed + ahead - funds.headroom)
        async with self.sessions() as session, session.begin():
            await self._renew(session, user_id, token)
            await self._leave_fulfilling(
                session,
                order_id,
                token,
                OrderStatus.AWAITING_FUNDS,
                kind="awaiting_funds",
                detail={
                    "needed": str(needed),
                    "ahead": str(ahead),
                    "available": str(funds.available),
                    "committed": str(funds.committed),
                    "topup": str(topup),
                },
                next_attempt_at=utcnow() + self.funds_recheck,
                funds_needed_usd=needed,
                funds_topup_usd=topup,
            )
            figures = {
                "order_id": order_id,
                "topup": format_usd(topup),
                "available": format_usd(funds.available),
                "committed": format_usd(funds.committed),
                "needed": format_usd(needed),
                "ahead": format_usd(ahead),
            }
            # The figure told is stored in this transaction, fenced by the lease: told once
            # per figure. Dedupe per attempt: an order back in the queue after /retry of a
            # failure (which forgets the figure) is announced again.
            if told is not None and told != topup:
                await self.notifier.admin(
                    session,
                    "admin.awaiting_funds_changed",
                    dedupe=f"awaiting-funds:{order_id}:{attempts}",
                    recheck=True,
                    previous=format_usd(told),
                    **figures,
                )
            elif told is None:
                await self.notifier.admin(
                    session,
                    "admin.awaiting_funds",
                    dedupe=f"awaiting-funds:{order_id}:{attempts}",
                    recheck=True,
                    **figures,
                )
                await self.notifier.user(
                    session,
                    user_id,
                    "notify.delayed",
                    dedupe=f"delayed:{order_id}",
                    order_id=order_id,
                )
        log.warning("awaiting_funds order=%s topup=%s", order_id, topup)

    async def _attempt_failed(
        self,
        order_id: int,
        user_id: int,
        token: str,
        attempts: int,
        exc: OpenRouterError,
    ) -> None:
        give_up = not exc.transient or attempts >= self.max_attempts
        failure: dict[str, Any] = {"error": str(exc), "attempts": attempts}
        if give_up:
            # A PATCH of this attempt, or of an earlier one cut short by a crash, may have
            # landed with its answer lost: the credit may be on the key. A failed order is
            # out of the ledger, so the key goes back to the ledger without it, confirmed.
            try:
                limit = await self.reassert_ledger(user_id, token)
                if limit is not None:
                    failure["key_limit"] = str(limit)
            except OpenRouterError as reassert_error:
                if reassert_error.transient:
                    # Can't confirm the key now: don't give up with credit maybe on it;
                    # the next attempt either delivers or gets here again.
                    give_up = False
                    exc = OpenRouterError(
                        "openrouter",
                        f"{exc}; key limit not confirmed after it: {reassert_error}",
                        transient=True,
                    )
                else:
                    failure["key_unconfirmed"] = str(reassert_error)
        async with self.sessions() as session, session.begin():
            await self._renew(session, user_id, token)
            if give_up:
                await self._leave_fulfilling(
                    session,
                    order_id,
                    token,
                    OrderStatus.FAILED,
                    kind="fulfilment_failed",
                    detail=failure,
                    last_error=str(exc)[:2000],
                    # Out of the funds queue; an admin's /retry starts it afresh.
                    funds_needed_usd=None,
                    funds_topup_usd=None,
                )
                await self.notifier.admin(
                    session,
                    "admin.fulfilment_failed",
                    dedupe=f"failed:{order_id}:{attempts}",
                    order_id=order_id,
                    user_id=user_id,
                    error=str(exc)[:500],
                    attempts=attempts,
                )
                await self.notifier.user(
                    session,
                    user_id,
                    "notify.failed",
                    dedupe=f"failed:{order_id}",
                    order_id=order_id,
                )
            else:
                delay = self.retry_base * (2 ** (attempts - 1))
                await self._leave_fulfilling(
                    session,
                    order_id,
                    token,
                    OrderStatus.PAID,
                    kind="fulfilment_retry",
                    detail={
                        "error": str(exc),
                        "attempts": attempts,
                        "retry_in_s": delay.total_seconds(),
                    },
                    last_error=str(exc)[:2000],
                    next_attempt_at=utcnow() + min(delay, timedelta(minutes=30)),
                )
        log.warning(
            "fulfilment_attempt_failed order=%s attempts=%s give_up=%s error=%s",
            order_id,
            attempts,
            give_up,
            exc,
        )
