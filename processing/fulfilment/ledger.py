"""Put the buyer's key back to the ledger when an order leaves it for good."""

from __future__ import annotations

import logging
from decimal import Decimal

from sqlalchemy import update

from core.clock import utcnow
from db import repo
from db.models import ApiKey
from processing.fulfilment.leasing import BuyerLeasing
from services.errors import OpenRouterError
from services.openrouter import OpenRouterClient

log = logging.getLogger(__name__)


class LedgerReassert(BuyerLeasing):
    """Part of ``Fulfilment``: the key limit put back to the ledger, confirmed."""

    openrouter: OpenRouterClient

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
