"""The bot's HTTP server routes: provider callbacks and health.

A callback is read with a size limit, verified (fail closed) and handed to the one
confirm path. Unknown payments are acknowledged (2xx) so the provider stops retrying.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.jsonutil import loads
from processing.payments import AITokenPaymentProcessor, Outcome
from services.errors import ExternalError
from services.notify import Notifier
from services.payments.base import PaymentProvider
from services.signatures import verify_kryptoexpress

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
        provider: PaymentProvider | None,
        callback_secret: str | None,
        sessions: async_sessionmaker[AsyncSession],
        notifier: Notifier,
    ) -> None:
        self.processor = processor
        self.provider = provider
        self.secret = callback_secret
        self.sessions = sessions
        self.notifier = notifier

    def install(self, app: web.Application) -> None:
        app.router.add_post("/payments/kryptoexpress", self.kryptoexpress)
        app.router.add_get("/healthz", self.health)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def kryptoexpress(self, request: web.Request) -> web.Response:
        if self.provider is None:
            return web.json_response({"error": "provider not configured"}, status=404)
        if request.content_length is not None and request.content_length > MAX_CALLBACK_BYTES:
            return await self._reject(request, 413, "too_large")
        raw = await _read_limited(request, MAX_CALLBACK_BYTES)
        if raw is None:
            return await self._reject(request, 413, "too_large")
        if not verify_kryptoexpress(self.secret, raw, request.headers.get("X-Signature")):
            return await self._reject(request, 401, "bad_signature")
        try:
            payload = loads(raw)
            status = self.provider.parse_callback(payload)
        except (ValueError, ExternalError) as exc:
            log.warning("callback_malformed provider=kryptoexpress error=%s", exc)
            return web.json_response({"error": "malformed"}, status=400)
        result = await self.processor.apply_status(status, source="callback:kryptoexpress")
        log.info(
            "callback provider=kryptoexpress payment_id=%s outcome=%s order=%s",
            status.payment_id,
            result.outcome,
            result.order_id,
        )
        if result.outcome is Outcome.UNKNOWN:
            return web.json_response({"ok": True, "ignored": "unknown payment"})
        return web.json_response({"ok": True, "outcome": result.outcome.value})

    async def _reject(self, request: web.Request, status: int, reason: str) -> web.Response:
        log.warning(
            "callback_rejected provider=kryptoexpress reason=%s remote=%s", reason, request.remote
        )
        window = int(time.time() // REJECT_ALERT_WINDOW)
        async with self.sessions() as session, session.begin():
            await self.notifier.admin(
                session,
                "admin.callback_rejected",
                dedupe=f"rejected:{reason}:{window}",
                provider="kryptoexpress",
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
