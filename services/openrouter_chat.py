"""OpenRouter chat completions on the buyer's own key: streamed, billed by OpenRouter.

``POST /chat/completions`` with ``stream: true`` answers in server-sent events: comment
lines (``: OPENROUTER PROCESSING``) to ignore, ``data: {chunk}`` lines whose
``choices[0].delta.content`` grow the answer, a last chunk carrying ``usage`` (with
``cost``, OpenRouter's own figure in USD) and ``data: [DONE]``. An error before the model
starts is an HTTP status with ``{"error": {code, message}}``; 402 means the key's limit
(or the account) cannot cover the request — older answers used 403 "Key limit exceeded".
An error after the stream started arrives as a chunk with ``error``.

The key is passed per call and lives only in the request's header; nothing here logs it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

from core.jsonutil import loads
from core.money import to_decimal
from services.http import tls_context


class ChatCallError(Exception):
    """The chat call failed; ``credit`` True when the key's credit is used up."""

    def __init__(self, reason: str, *, status: int | None = None, credit: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.credit = credit


@dataclass(frozen=True)
class Delta:
    text: str
    generation_id: str | None  # known from the first chunk: a stopped answer's stats


@dataclass(frozen=True)
class Usage:
    generation_id: str | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal | None


@dataclass(frozen=True)
class KeyCredit:
    limit: Decimal | None
    remaining: Decimal | None


def _is_credit_refusal(status: int, message: str) -> bool:
    # 402: the key's limit or the account's credit; 403 with "limit": older wording.
    return status == 402 or (status == 403 and "limit" in message.lower())


def _error_message(body: bytes) -> str:
    try:
        parsed = loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or "")
    return ""


class OpenRouterChat:
    def __init__(self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            # The overall deadline is the caller's (CHAT_TIMEOUT_SECONDS); this only
            # bounds one read so a silent connection is noticed.
            timeout=httpx.Timeout(60.0, connect=5.0),
            verify=tls_context(),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def stream(
        self, key: str, model: str, messages: list[dict[str, str]], max_tokens: int
    ) -> AsyncIterator[Delta | Usage]:
        """Deltas as they come, then one Usage. Closing the iterator early hangs up,
        which makes OpenRouter stop generating (and billing)."""
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True}
        headers = {"Authorization": f"Bearer {key}"}
        try:
            async with self._client.stream(
                "POST", "/chat/completions", json=body, headers=headers
            ) as response:
                if response.status_code != 200:
                    message = _error_message(await response.aread())
                    raise ChatCallError(
                        message or f"HTTP {response.status_code}",
                        status=response.status_code,
                        credit=_is_credit_refusal(response.status_code, message),
                    )
                generation_id: str | None = None
                model_used: str | None = None
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators and ": OPENROUTER PROCESSING"
                    data = line.removeprefix("data:").strip()
                    if data == "[DONE]":
                        return
                    chunk = loads(data)
                    if not isinstance(chunk, dict):
                        continue
                    generation_id = chunk.get("id") or generation_id
                    model_used = chunk.get("model") or model_used
                    error = chunk.get("error")
                    if isinstance(error, dict):
                        raise ChatCallError(str(error.get("message") or "model error"))
                    for choice in chunk.get("choices") or []:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            yield Delta(str(content), generation_id)
                    usage = chunk.get("usage")
                    if isinstance(usage, dict):
                        cost = usage.get("cost")
                        yield Usage(
                            generation_id,
                            model_used,
                            int(usage.get("prompt_tokens") or 0),
                            int(usage.get("completion_tokens") or 0),
                            None if cost is None else to_decimal(cost),
                        )
        except httpx.HTTPError as exc:
            raise ChatCallError(f"transport: {type(exc).__name__}") from None

    async def generation(self, key: str, generation_id: str) -> Usage | None:
        """A finished generation's stats (``GET /generation``), None while not ready."""
        try:
            response = await self._client.get(
                "/generation",
                params={"id": generation_id},
                headers={"Authorization": f"Bearer {key}"},
            )
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        data = (loads(response.content) or {}).get("data") or {}
        cost = data.get("total_cost")
        return Usage(
            generation_id,
            data.get("model"),
            int(data.get("tokens_prompt") or 0),
            int(data.get("tokens_completion") or 0),
            None if cost is None else to_decimal(cost),
        )

    async def credit(self, key: str) -> KeyCredit | None:
        """The key's own view of its limit (``GET /key``), None when it does not answer."""
        try:
            response = await self._client.get("/key", headers={"Authorization": f"Bearer {key}"})
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        data: dict[str, Any] = (loads(response.content) or {}).get("data") or {}
        limit, remaining = data.get("limit"), data.get("limit_remaining")
        return KeyCredit(
            None if limit is None else to_decimal(limit),
            None if remaining is None else to_decimal(remaining),
        )
