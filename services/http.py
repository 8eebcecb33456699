"""Outbound HTTP with a timeout, a bounded retry where safe, and typed errors.

Retries happen only on 5xx, 408/429 and transport failures, and only when the call is
safe to repeat: a non-idempotent call (creating a payment or a key) is retried only
when the request never left (connection refused), because a timeout or a 5xx may mean
the provider already acted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import ssl
from collections.abc import Callable
from typing import Any

import httpx

from core.jsonutil import dumps, loads
from services.errors import ExternalError

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
DEFAULT_TIMEOUT = 10.0
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF = 0.3
# The back-off before attempt n+1 is backoff × 2^(n-1) × a jitter factor in [0.5, 1.5).
MAX_JITTER = 1.5


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context (httpx's default: certifi's CAs) for every client of the process.
    Each httpx client otherwise builds its own and loads the CA bundle again, about
    0.8 MiB resident each (issue 14 item 6, bench/hotspots.md)."""
    return httpx.create_ssl_context()


def worst_call_seconds(
    timeout: float = DEFAULT_TIMEOUT,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
) -> float:
    """The longest one ``JsonHttp.request`` can take: every attempt runs into its
    deadline, with the longest back-off between them. Leases that cover a call must
    outlast this (bot/settings.py)."""
    attempts = max(1, attempts)
    pauses = sum(backoff * 2.0 ** (n - 1) * MAX_JITTER for n in range(1, attempts))
    return float(attempts * timeout + pauses)


def parse_json(content: bytes) -> Any:
    """Provider JSON with every fractional number as Decimal (never float)."""
    return loads(content)


class JsonHttp:
    """A small wrapper over one httpx.AsyncClient per external service."""

    def __init__(
        self,
        service: str,
        base_url: str,
        *,
        error_type: type[ExternalError],
        headers: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.service = service
        self.error_type = error_type
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        # Told of every failed attempt (service, kind): the app counts them for /metrics.
        self.on_error: Callable[[str, str], None] | None = None
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers or {},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            verify=tls_context(),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool = True,
        ok: Callable[[int], bool] = lambda status: 200 <= status < 300,
    ) -> Any:
        content = None
        send_headers = dict(headers or {})
        if json_body is not None:
            content = dumps(json_body)
            send_headers["Content-Type"] = "application/json"
        last: ExternalError | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                # httpx's timeouts bound each phase (connect, each read…), not the whole
                # attempt; this deadline does, so worst_call_seconds() is a real bound.
                async with asyncio.timeout(self.timeout):
                    response = await self._client.request(
                        method, path, content=content, params=params, headers=send_headers
                    )
            except httpx.ConnectError as exc:
                self._count("connect")
                last = self.error_type(
                    self.service,
                    f"{method} {path}: cannot connect: {exc}",
                    transient=True,
                    unsent=True,
                )
            except (httpx.TimeoutException, httpx.TransportError, TimeoutError) as exc:
                timed_out = isinstance(exc, httpx.TimeoutException | TimeoutError)
                self._count("timeout" if timed_out else "transport")
                last = self.error_type(
                    self.service, f"{method} {path}: {type(exc).__name__}", transient=True
                )
                if not idempotent:
                    raise last from exc
            else:
                if ok(response.status_code):
                    if not response.content:
                        return None
                    try:
                        return parse_json(response.content)
                    except ValueError as exc:
                        self._count("invalid_json")
                        raise self.error_type(
                            self.service,
                            f"{method} {path}: invalid JSON",
                            status=response.status_code,
                            body=response.text[:500],
                        ) from exc
                self._count(f"http_{response.status_code}")
                transient = response.status_code in RETRYABLE_STATUS
                last = self.error_type(
                    self.service,
                    f"{method} {path}: {_error_message(response)}",
                    status=response.status_code,
                    transient=transient,
                    body=response.text[:2000],
                )
                if not transient or not idempotent:
                    raise last
            if attempt < self.attempts:
                jitter = 0.5 + random.random()  # below MAX_JITTER
                delay = self.backoff * (2 ** (attempt - 1)) * jitter
                log.warning(
                    "external_retry service=%s attempt=%d error=%s", self.service, attempt, last
                )
                await asyncio.sleep(delay)
        assert last is not None
        raise last

    def _count(self, kind: str) -> None:
        if self.on_error is not None:
            self.on_error(self.service, kind)


def observe_errors(client: object, on_error: Callable[[str, str], None]) -> None:
    """Tell ``on_error`` of every failed call of each ``JsonHttp`` a client holds (a
    provider or OpenRouter), without each client's constructor growing a parameter."""
    for value in vars(client).values():
        if isinstance(value, JsonHttp):
            value.on_error = on_error


def _error_message(response: httpx.Response) -> str:
    try:
        body = parse_json(response.content)
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])[:200]
        if isinstance(err, dict) and "name" in err:
            return str(err["name"])[:200]
        if "description" in body:
            return str(body["description"])[:200]
    return response.text[:200]
