"""OpenRouter client: model prices, buyer keys (Management API) and account credits.

Only the calls of SPEC §2. Amounts come back as JSON numbers; they are parsed straight
into Decimal. ``POST /credits/coinbase`` (crypto top-up) is gone (410) and never used:
the bot never buys credit, it only raises a paid-for key limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

from core.money import to_decimal
from services.errors import OpenRouterError
from services.http import JsonHttp, worst_call_seconds
from services.pricing import ModelPrice

KEYS_PAGE_SIZE = 100
OPENROUTER_TIMEOUT = 10.0  # seconds per attempt
OPENROUTER_ATTEMPTS = 3
# One OpenRouter call with all its retries, at most (31.35 s with the values above).
OPENROUTER_WORST_CALL_SECONDS = worst_call_seconds(OPENROUTER_TIMEOUT, OPENROUTER_ATTEMPTS)
# Room on top of that for the commit that re-asserts a lease right before the PATCH and
# for clock skew between replicas (a lease's expiry is written by one, read by another).
LEASE_MARGIN_SECONDS = 5.0


def min_lease_seconds(worst_call: float = OPENROUTER_WORST_CALL_SECONDS) -> int:
    """The shortest lease that outlasts one OpenRouter call with all its retries.

    A holder re-asserts its lease right before a PATCH; if the lease could run out
    while that PATCH (or one of its retries) is still on its way, another worker could
    take over and write a newer limit that the stale PATCH then overwrites.
    """
    return math.ceil(worst_call + LEASE_MARGIN_SECONDS)


@dataclass(frozen=True)
class KeyInfo:
    hash: str
    name: str
    label: str
    disabled: bool
    limit: Decimal | None
    limit_remaining: Decimal | None
    usage: Decimal
    usage_daily: Decimal
    usage_weekly: Decimal
    usage_monthly: Decimal

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> KeyInfo:
        def amount(name: str) -> Decimal:
            value = data.get(name)
            return Decimal(0) if value is None else to_decimal(value)

        limit = data.get("limit")
        remaining = data.get("limit_remaining")
        return cls(
            hash=str(data["hash"]),
            name=str(data.get("name") or ""),
            label=str(data.get("label") or ""),
            disabled=bool(data.get("disabled", False)),
            limit=None if limit is None else to_decimal(limit),
            limit_remaining=None if remaining is None else to_decimal(remaining),
            usage=amount("usage"),
            usage_daily=amount("usage_daily"),
            usage_weekly=amount("usage_weekly"),
            usage_monthly=amount("usage_monthly"),
        )


@dataclass(frozen=True)
class Credits:
    total_credits: Decimal
    total_usage: Decimal

    @property
    def balance(self) -> Decimal:
        return self.total_credits - self.total_usage


class OpenRouterClient:
    def __init__(
        self,
        base_url: str,
        management_key: str,
        *,
        api_key: str | None = None,
        timeout: float = OPENROUTER_TIMEOUT,
        attempts: int = OPENROUTER_ATTEMPTS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._mgmt = JsonHttp(
            "openrouter",
            base_url,
            error_type=OpenRouterError,
            headers={"Authorization": f"Bearer {management_key}"},
            timeout=timeout,
            attempts=attempts,
            transport=transport,
        )
        public_headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._public = JsonHttp(
            "openrouter",
            base_url,
            error_type=OpenRouterError,
            headers=public_headers,
            timeout=timeout,
            attempts=attempts,
            transport=transport,
        )

    @property
    def worst_call_seconds(self) -> float:
        """The longest one management call (with its retries) can take on this client."""
        return worst_call_seconds(self._mgmt.timeout, self._mgmt.attempts, self._mgmt.backoff)

    async def aclose(self) -> None:
        await self._mgmt.aclose()
        await self._public.aclose()

    # ------------------------------------------------------------------ models
    async def list_models(self) -> list[ModelPrice]:
        body = await self._public.request("GET", "/models")
        result: list[ModelPrice] = []
        for item in _data_list(body):
            pricing = item.get("pricing") or {}
            try:
                prompt = to_decimal(pricing.get("prompt", "0"))
                completion = to_decimal(pricing.get("completion", "0"))
            except ValueError:
                continue  # a model with a price we cannot read is simply not sold
            result.append(
                ModelPrice(str(item["id"]), str(item.get("name") or item["id"]), prompt, completion)
            )
        return result

    # -------------------------------------------------------------------- keys
    async def create_key(self, name: str, limit: Decimal) -> tuple[KeyInfo, str]:
        """Create a key; returns its info and the plaintext, which is never shown again."""
        body = await self._mgmt.request(
            "POST", "/keys", json_body={"name": name, "limit": limit}, idempotent=False
        )
        if not isinstance(body, dict) or "key" not in body or "data" not in body:
            raise OpenRouterError("openrouter", "POST /keys: unexpected answer")
        return KeyInfo.from_api(body["data"]), str(body["key"])

    async def list_keys(self, offset: int = 0, *, include_disabled: bool = True) -> list[KeyInfo]:
        body = await self._mgmt.request(
            "GET",
            "/keys",
            params={"offset": offset, "include_disabled": str(include_disabled).lower()},
        )
        return [KeyInfo.from_api(item) for item in _data_list(body)]

    async def iter_keys(self) -> AsyncIterator[KeyInfo]:
        """Every key of the account, 100 per call."""
        async for page in self.iter_key_pages():
            for key in page:
                yield key

    async def iter_key_pages(self) -> AsyncIterator[list[KeyInfo]]:
        """Every key of the account, one page (a call) at a time; the next page is asked
        for only when the caller is done with this one."""
        offset = 0
        while True:
            page = await self.list_keys(offset)
            yield page
            if len(page) < KEYS_PAGE_SIZE:
                return
            offset += len(page)

    async def find_keys_by_name(self, name: str) -> list[KeyInfo]:
        return [key async for key in self.iter_keys() if key.name == name]

    async def get_key(self, key_hash: str) -> KeyInfo:
        body = await self._mgmt.request("GET", f"/keys/{key_hash}")
        return KeyInfo.from_api(_data_obj(body))

    async def set_key_limit(self, key_hash: str, limit: Decimal) -> KeyInfo:
        """Set the absolute spending limit (never a delta: a retry cannot double it)."""
        body = await self._mgmt.request("PATCH", f"/keys/{key_hash}", json_body={"limit": limit})
        return KeyInfo.from_api(_data_obj(body))

    async def delete_key(self, key_hash: str) -> None:
        await self._mgmt.request("DELETE", f"/keys/{key_hash}")

    # ----------------------------------------------------------------- credits
    async def credits(self) -> Credits:
        body = await self._mgmt.request("GET", "/credits")
        data = _data_obj(body)
        return Credits(
            to_decimal(data.get("total_credits", 0)), to_decimal(data.get("total_usage", 0))
        )


class ModelCatalog:
    """Cached OpenRouter prices for the operator's models (SPEC §2: a quote locks its price)."""

    def __init__(self, client: OpenRouterClient, model_ids: list[str], ttl: float = 600.0) -> None:
        self._client = client
        self.model_ids = list(model_ids)
        self._ttl = ttl
        self._prices: dict[str, ModelPrice] = {}
        self._fetched_at = 0.0

    async def refresh(self) -> list[str]:
        """Fetch prices now; return configured ids that are missing or not sellable."""
        listed = {m.id: m for m in await self._client.list_models()}
        self._prices = {
            mid: listed[mid] for mid in self.model_ids if mid in listed and listed[mid].sellable
        }
        self._fetched_at = time.monotonic()
        return [mid for mid in self.model_ids if mid not in self._prices]

    async def _ensure(self) -> None:
        if not self._prices or time.monotonic() - self._fetched_at > self._ttl:
            try:
                await self.refresh()
            except OpenRouterError:
                if not self._prices:
                    raise
                # Keep selling on the last known prices while OpenRouter is unreachable.

    async def offered(self) -> list[ModelPrice]:
        await self._ensure()
        return [self._prices[mid] for mid in self.model_ids if mid in self._prices]

    async def get(self, model_id: str) -> ModelPrice | None:
        await self._ensure()
        return self._prices.get(model_id)


def _data_list(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict) and isinstance(body.get("data"), list):
        return [item for item in body["data"] if isinstance(item, dict)]
    raise OpenRouterError("openrouter", "unexpected answer: no data list")


def _data_obj(body: Any) -> dict[str, Any]:
    if isinstance(body, dict) and isinstance(body.get("data"), dict):
        return dict(body["data"])
    raise OpenRouterError("openrouter", "unexpected answer: no data object")
