"""The buyer's OpenRouter key: created once, even across crashes."""

from __future__ import annotations

import logging
from decimal import Decimal

from sqlalchemy import select

from core.clock import utcnow
from db import repo
from db.models import ApiKey, Order, OrderEvent, OrderStatus
from processing.fulfilment.leasing import BuyerLeasing
from services.openrouter import OpenRouterClient
from services.vault import KeyVault

log = logging.getLogger(__name__)

KEY_NAME_PREFIX = "tg-"
KEY_CREATE_STARTED = "key_create_started"


def key_name(user_id: int) -> str:
    return f"{KEY_NAME_PREFIX}{user_id}"


class KeyCreation(BuyerLeasing):
    """Part of ``Fulfilment``: the buyer's key, created at most once."""

    openrouter: OpenRouterClient
    vault: KeyVault

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
