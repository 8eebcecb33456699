"""Quota status, read from OpenRouter itself (SPEC §2), never estimated from local tables.

A short cache (≤ 60 s) keeps repeated taps from hammering the API. When OpenRouter
does not answer, the last figures it gave are shown with their age.

The cache is per process, but each entry is tied to the version of the buyer's key row
(``api_keys.updated_at``) it was fetched under, and that row is read on every request.
A delivery bumps the version in the transaction that queues "delivered", so `/quota`
right after it misses the cache in every replica, whichever one delivered.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, Decimal

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from db import repo
from db.models import ApiKey
from services.errors import DomainError, OpenRouterError
from services.openrouter import KeyInfo, ModelCatalog, OpenRouterClient

RUNWAY_WINDOW_DAYS = Decimal(7)


class QuotaUnavailable(DomainError):
    """OpenRouter is down and we have never seen this key's figures."""

    key = "quota.unavailable"


@dataclass(frozen=True)
class QuotaView:
    limit: Decimal
    used: Decimal
    remaining: Decimal
    remaining_tokens: int | None  # ≈ at the buyer's model completion price
    model: str
    usage_daily: Decimal
    usage_weekly: Decimal
    usage_monthly: Decimal
    as_of: datetime
    stale: bool  # True: OpenRouter did not answer; these are the last known figures

    @property
    def used_share(self) -> Decimal:
        return Decimal(0) if self.limit <= 0 else min(Decimal(1), self.used / self.limit)

    @property
    def runway_days(self) -> Decimal | None:
        """Days the remaining credit lasts at the last-7-days pace; None without usage."""
        if self.usage_weekly <= 0:
            return None
        pace = self.usage_weekly / RUNWAY_WINDOW_DAYS
        return (self.remaining / pace).quantize(Decimal("0.1"), rounding=ROUND_DOWN)


@dataclass(frozen=True)
class _Figures:
    limit: Decimal
    usage: Decimal
    daily: Decimal
    weekly: Decimal
    monthly: Decimal
    as_of: datetime


class QuotaService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        openrouter: OpenRouterClient,
        catalog: ModelCatalog,
        default_model: str,
        *,
        cache_seconds: float = 60.0,
    ) -> None:
        self.sessions = sessions
        self.openrouter = openrouter
        self.catalog = catalog
        self.default_model = default_model
        self.cache_seconds = min(cache_seconds, 60.0)
        # key hash → (monotonic time, key row version, figures): see the module docstring.
        self._cache: dict[str, tuple[float, datetime, _Figures]] = {}
        self._inflight: dict[tuple[str, datetime], asyncio.Future[tuple[_Figures, bool]]] = {}

    async def quota(self, user_id: int, model_id: str | None) -> QuotaView | None:
        """None when the buyer has no key yet."""
        async with self.sessions() as session:
            key = await repo.get_api_key(session, user_id)
        if key is None:
            return None
        figures, stale = await self._figures(key)
        limit = figures.limit
        remaining = max(Decimal(0), limit - figures.usage)
        model_id = model_id or self.default_model
        tokens = None
        try:
            price = await self.catalog.get(model_id)
        except OpenRouterError:
            price = None
        if price is not None and price.completion > 0:
            tokens = int((remaining / price.completion).to_integral_value(rounding=ROUND_DOWN))
        return QuotaView(
            limit=limit,
            used=figures.usage,
            remaining=remaining,
            remaining_tokens=tokens,
            model=model_id,
            usage_daily=figures.daily,
            usage_weekly=figures.weekly,
            usage_monthly=figures.monthly,
            as_of=figures.as_of,
            stale=stale,
        )

    async def _figures(self, key: ApiKey) -> tuple[_Figures, bool]:
        slot = (key.openrouter_hash, key.updated_at)
        cached = self._cache.get(key.openrouter_hash)
        if (
            cached
            and cached[1] == key.updated_at
            and time.monotonic() - cached[0] < self.cache_seconds
        ):
            return cached[2], False
        # Taps arrive as concurrent updates: without single-flight, three quick taps
        # on a cold cache would each miss it and make three calls. A fetch begun under
        # an older version is not joined: it may predate the new limit.
        pending = self._inflight.get(slot)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(key, slot))
            self._inflight[slot] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(slot, None))
        return await asyncio.shield(pending)

    async def _fetch(self, key: ApiKey, slot: tuple[str, datetime]) -> tuple[_Figures, bool]:
        try:
            info = await self.openrouter.get_key(key.openrouter_hash)
        except OpenRouterError:
            if key.last_checked_at is None or key.last_limit is None:
                raise QuotaUnavailable() from None
            return _Figures(
                key.last_limit,
                key.last_usage or Decimal(0),
                key.last_usage_daily or Decimal(0),
                key.last_usage_weekly or Decimal(0),
                key.last_usage_monthly or Decimal(0),
                key.last_checked_at,
            ), True
        figures = _from_info(info)
        self._cache[key.openrouter_hash] = (time.monotonic(), slot[1], figures)
        await self.remember(key.id, figures)
        return figures, False

    async def remember(self, key_id: int, figures: _Figures) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id)
                .values(
                    last_limit=figures.limit,
                    last_usage=figures.usage,
                    last_usage_daily=figures.daily,
                    last_usage_weekly=figures.weekly,
                    last_usage_monthly=figures.monthly,
                    last_checked_at=figures.as_of,
                )
            )


def last_known(info: KeyInfo, at: datetime) -> dict[str, object]:
    """``api_keys`` columns holding what OpenRouter last said about a key: shown, with
    their age, when it does not answer."""
    return {
        "last_limit": info.limit,
        "last_usage": info.usage,
        "last_usage_daily": info.usage_daily,
        "last_usage_weekly": info.usage_weekly,
        "last_usage_monthly": info.usage_monthly,
        "last_checked_at": at,
    }


def _from_info(info: KeyInfo) -> _Figures:
    return _Figures(
        limit=info.limit or Decimal(0),
        usage=info.usage,
        daily=info.usage_daily,
        weekly=info.usage_weekly,
        monthly=info.usage_monthly,
        as_of=utcnow(),
    )


def progress_bar(share: Decimal, width: int = 10) -> str:
    filled = int((share * width).to_integral_value(rounding=ROUND_DOWN))
    filled = max(0, min(width, filled))
    return "▓" * filled + "░" * (width - filled)
