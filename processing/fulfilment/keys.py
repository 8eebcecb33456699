"""The buyer's OpenRouter key: created once, even across crashes."""

from __future__ import annotations

import logging
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.clock import utcnow
from db import repo
from db.models import ApiKey, Order, OrderEvent, OrderStatus
from processing.fulfilment.leasing import BuyerLeasing
from services.errors import OpenRouterError
from services.openrouter import KeyInfo, OpenRouterClient
from services.vault import KeyVault

log = logging.getLogger(__name__)

KEY_NAME_PREFIX = "tg-"
KEY_CREATE_STARTED = "key_create_started"
# POST /keys surely made no key (refused, or never sent): the next attempt needn't look.
KEY_CREATE_REFUSED = "key_create_refused"


def key_name(user_id: int) -> str:
    return f"{KEY_NAME_PREFIX}{user_id}"


def surely_not_created(exc: OpenRouterError) -> bool:
    """A failed ``POST /keys`` that surely made no key: the request never left, or
    OpenRouter answered it with a refusal (4xx). A timeout, a dropped connection or a 5xx
    may have come after the key was made: its outcome is unknown."""
    return exc.unsent or (exc.status is not None and 400 <= exc.status < 500)


class KeyCreation(BuyerLeasing):
    """Part of ``Fulfilment``: the buyer's key, created at most once."""

    openrouter: OpenRouterClient
    vault: KeyVault

    async def _ensure_key(
        self,
        user_id: int,
        order_id: int,
        key_row: ApiKey | None,
        token: str,
        *,
        orphan_possible: bool | None = None,
    ) -> tuple[str, KeyInfo | None]:
        """The buyer's key hash, and the new key's info when this call created it.

        Idempotent at O(1) calls: an event is committed before ``POST /keys`` and
        another when it surely made no key. Only a start with neither a stored key nor
        that refusal after it — a timeout, a lost answer, a crash between the POST and
        the record — may have left an orphan, and only then is the key list (O(buyers)
        calls) read to find it. ``orphan_possible``: the caller already committed the
        start (``key_intent``, in the transaction that claimed the order) and this is
        what it found."""
        if key_row is not None:
            return key_row.openrouter_hash, None
        name = key_name(user_id)
        actor = f"worker:{token[:8]}"
        if orphan_possible is None:
            async with self.sessions() as session, session.begin():
                await self._renew(session, user_id, token)
                orphan_possible = await self.key_intent(session, user_id, order_id, token)
        if orphan_possible:
            await self._clear_orphans(user_id, name)
        try:
            info, plaintext = await self.openrouter.create_key(name, Decimal("0"))
        except OpenRouterError as exc:
            if surely_not_created(exc):
                async with self.sessions() as session, session.begin():
                    await self._renew(session, user_id, token)
                    repo.add_event(
                        session,
                        order_id,
                        KEY_CREATE_REFUSED,
                        actor=actor,
                        status=OrderStatus.FULFILLING.value,
                        detail={"name": name, "error": str(exc)[:500]},
                    )
            raise
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
        return info.hash, info

    async def _clear_orphans(self, user_id: int, name: str) -> None:
        """An earlier create's outcome is unknown: find the key it may have made."""
        for orphan in await self.openrouter.find_keys_by_name(name):
            # A key with our buyer's name that we never stored: a crash after POST
            # /keys lost its plaintext. It was created with a zero limit, so nothing is
            # lost by deleting it; one with credit on it is left for the operator.
            if (orphan.limit or 0) == 0 and orphan.usage == 0:
                log.warning("orphan_key_deleted user=%s hash=%s", user_id, orphan.hash[:12])
                await self.openrouter.delete_key(orphan.hash)
            else:
                log.error("orphan_key_with_credit user=%s hash=%s", user_id, orphan.hash[:12])

    async def key_intent(
        self, session: AsyncSession, user_id: int, order_id: int, token: str
    ) -> bool:
        """Record, in the caller's transaction, that this attempt is about to create the
        buyer's key; True when the buyer's last such start has no refusal after it (an
        earlier POST /keys with an unknown outcome: an orphan may exist)."""
        last = (
            await session.execute(
                select(OrderEvent.kind)
                .join(Order, Order.id == OrderEvent.order_id)
                .where(
                    Order.user_id == user_id,
                    OrderEvent.kind.in_((KEY_CREATE_STARTED, KEY_CREATE_REFUSED)),
                )
                .order_by(OrderEvent.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        repo.add_event(
            session,
            order_id,
            KEY_CREATE_STARTED,
            actor=f"worker:{token[:8]}",
            status=OrderStatus.FULFILLING.value,
            detail={"name": key_name(user_id)},
        )
        return last == KEY_CREATE_STARTED
