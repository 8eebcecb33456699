"""The buyer's lease: one worker at a time changes a buyer's key.

All orders of one buyer raise one key, so everything that changes it (a delivery, a
refund) holds the lease on the user row; its token fences every write that follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from db import repo
from db.models import OrderStatus, User


class LeaseLost(Exception):
    """Another worker owns this buyer now; stop without touching anything else."""


class BuyerBusy(Exception):
    """A delivery (or another change) holds this buyer's lease right now; try again later."""


class BuyerLeasing:
    """Taking, renewing and dropping the buyer's lease (part of ``Fulfilment``).

    The parts of ``Fulfilment`` are mixins sharing one instance, so its settings
    (``lease``, ``retry_base``…) live in one place and can be tuned on one object."""

    sessions: async_sessionmaker[AsyncSession]
    lease: timedelta

    async def _claim_user(self, user_id: int, token: str) -> bool:
        async with self.sessions() as session, session.begin():
            return await self._claim_user_in(session, user_id, token)

    async def _claim_user_in(self, session: AsyncSession, user_id: int, token: str) -> bool:
        """Take the buyer's lease in the caller's transaction, if no one holds it."""
        now = utcnow()
        result = await session.execute(
            update(User)
            .where(User.id == user_id, repo.lease_free(User.lease_until, now))
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

    async def _release_user(self, user_id: int, token: str) -> None:
        async with self.sessions() as session, session.begin():
            await self._let_go(session, user_id, token)

    async def _let_go(self, session: AsyncSession, user_id: int, token: str) -> None:
        """Drop the buyer's lease in the caller's transaction (only if still ours)."""
        await session.execute(
            update(User)
            .where(User.id == user_id, User.lease_owner == token)
            .values(lease_owner=None, lease_until=None)
        )
