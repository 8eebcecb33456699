"""The bot's HTTP server routes: provider callbacks (health and metrics: observe.py).

A callback is read with a size limit, verified (fail closed) and handed to the one
confirm path. Unknown payments are acknowledged (2xx) so the provider stops retrying.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.metrics import Metrics
from processing.payments import AITokenPaymentProcessor, Outcome
from services.errors import CallbackMalformed, CallbackRejected
from services.notify import Notifier
from services.payments.base import CALLBACK_ROUTE, PaymentProvider

log = logging.getLogger(__name__)

MAX_CALLBACK_BYTES = 64 * 1024
# One admin alert per this many seconds about rejected signatures (a flood must not
# turn into a flood of alerts).
REJECT_ALERT_WINDOW = 300


def hide_server_software(app: web.Application) -> None:
    """No response of the bot's HTTP server names its software and versions (aiohttp
    adds ``Server: Python/3.x aiohttp/3.x`` to every one): it only helps an attacker
    pick exploits. Runs after aiohttp set its headers, before they are written."""

    async def drop(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.popall("Server", None)

    app.on_response_prepare.append(drop)


class CallbackRoutes:
    def __init__(
        self,
        processor: AITokenPaymentProcessor,
        providers: Mapping[str, PaymentProvider],
        sessions: async_sessionmaker[AsyncSession],
        notifier: Notifier,
        metrics: Metrics | None = None,
        *,
        concurrency: int = 4,
    ) -> None:
        self.processor = processor
        self.providers = providers
        self.sessions = sessions
        self.notifier = notifier
        self.metrics = metrics or Metrics()
        # Callbacks using the database at once (db/engine.py Admission): the rest of a
        # burst waits here, so none waits out the pool's timeout and answers 500.
        self._admit = asyncio.Semaphore(concurrency)

    def install(self, app: web.Application) -> None:
        app.router.add_post(CALLBACK_ROUTE, self.callback)

    async def callback(self, request: web.Request) -> web.Response:
        name = request.match_info["provider"]
        provider = self.providers.get(name)
        if provider is None:  # unknown, or known but not configured here
            return web.json_response({"error": "provider not configured"}, status=404)
        if request.content_length is not None and request.content_length > MAX_CALLBACK_BYTES:
            return await self._reject(request, name, 413, "too_large")
        raw = await _read_limited(request, MAX_CALLBACK_BYTES)
        if raw is None:
            return await self._reject(request, name, 413, "too_large")
        try:
            status = provider.verify_callback(raw, request.headers)
        except CallbackMalformed as exc:
            log.warning("callback_malformed provider=%s error=%s", name, exc)
            self.metrics.rejected(name, "malformed")
            return web.json_response({"error": "malformed"}, status=400)
        except CallbackRejected as exc:
            return await self._reject(request, name, 401, exc.reason)
        if status is None:
            log.info("callback_ignored provider=%s", name)
            return web.json_response({"ok": True, "ignored": "not a payment"})
        async with self._admit:
            result = await self.processor.apply_status(status, source=f"callback:{name}")
        log.info(
            "callback provider=%s payment_id=%s outcome=%s order=%s",
            name,
            status.payment_id,
            result.outcome,
            result.order_id,
        )
        if result.outcome is Outcome.UNKNOWN:
            return web.json_response({"ok": True, "ignored": "unknown payment"})
        return web.json_response({"ok": True, "outcome": result.outcome.value})

    async def _reject(
        self, request: web.Request, provider: str, status: int, reason: str
    ) -> web.Response:
        log.warning(
            "callback_rejected provider=%s reason=%s remote=%s", provider, reason, request.remote
        )
        self.metrics.rejected(provider, reason)
        window = int(time.time() // REJECT_ALERT_WINDOW)
        async with self._admit, self.sessions() as session, session.begin():
            await self.notifier.admin(
                session,
                "admin.callback_rejected",
                dedupe=f"rejected:{reason}:{window}",
                provider=provider,
                reason=reason,
                remote=request.remote or "?",
            )
        body: dict[str, Any] = {"error": reason}
        return web.json_response(body, status=status)


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """Read at most ``limit`` bytes; None if the body is larger (chunked or lying)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(8192):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
