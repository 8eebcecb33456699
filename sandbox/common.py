"""Pieces every emulator shares: serving on loopback, fault injection, exact JSON numbers.

The emulators stand in for real services in tests and in ``run.py --sandbox``.
They listen on loopback only and never reach the network.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------- JSON
# One implementation of exact-number JSON for the product and the emulators.
from services.jsonutil import dumps, loads, plain_number  # noqa: E402

__all__ = [
    "LOOPBACK",
    "FaultInjector",
    "FaultRule",
    "Served",
    "dumps",
    "json_response",
    "loads",
    "plain_number",
]


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(payload), status=status, content_type="application/json")


# ------------------------------------------------------------------------- faults
@dataclass
class FaultRule:
    """One injected failure: matches requests and breaks them."""

    path: str = ""  # prefix of the request path; "" matches all
    method: str = "*"
    mode: str = "status"  # status | timeout | drop
    status: int = 503
    body: Any = None
    count: int | None = 1  # how many matching requests; None = until cleared
    rate: float = 1.0  # probability a matching request is hit (chaos runs)
    delay: float = 30.0  # for mode=timeout: how long to hang before answering

    def matches(self, request: web.Request) -> bool:
        if self.method != "*" and self.method.upper() != request.method:
            return False
        return request.path.startswith(self.path)


@dataclass
class FaultInjector:
    """Holds fault rules and applies them in a middleware.

    ``control_prefix`` requests are never faulted, so tests can always steer.
    """

    control_prefix: str = "/control"
    rules: list[FaultRule] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(1234))
    hits: int = 0

    def add(self, spec: dict[str, Any]) -> FaultRule:
        rule = FaultRule(**spec)
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    def _take(self, request: web.Request) -> FaultRule | None:
        for rule in self.rules:
            if not rule.matches(request):
                continue
            if rule.rate < 1.0 and self.rng.random() >= rule.rate:
                continue
            if rule.count is not None:
                rule.count -= 1
                if rule.count <= 0:
                    self.rules.remove(rule)
            return rule
        return None

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if request.path.startswith(self.control_prefix):
            return await handler(request)
        rule = self._take(request)
        if rule is None:
            return await handler(request)
        self.hits += 1
        if rule.mode == "timeout":
            await asyncio.sleep(rule.delay)
        elif rule.mode == "drop":
            # Close the socket without an answer: the client sees a dropped connection.
            transport = request.transport
            if transport is not None:
                transport.close()
            raise web.HTTPInternalServerError()
        body = rule.body if rule.body is not None else default_error_body(rule.status)
        return json_response(body, status=rule.status)

    def install_control_routes(self, app: web.Application) -> None:
        async def add_fault(request: web.Request) -> web.Response:
            spec = await request.json()
            specs = spec if isinstance(spec, list) else [spec]
            for item in specs:
                self.add(item)
            return json_response({"ok": True, "rules": len(self.rules)})

        async def clear_faults(request: web.Request) -> web.Response:
            self.clear()
            return json_response({"ok": True})

        async def list_faults(request: web.Request) -> web.Response:
            return json_response({"rules": [r.__dict__ for r in self.rules], "hits": self.hits})

        app.router.add_post(f"{self.control_prefix}/faults", add_fault)
        app.router.add_delete(f"{self.control_prefix}/faults", clear_faults)
        app.router.add_get(f"{self.control_prefix}/faults", list_faults)


def default_error_body(status: int) -> dict[str, Any]:
    return {"error": {"code": status, "message": f"Injected failure {status}"}}


# ------------------------------------------------------------------------ serving
class Served:
    """An emulator app running on a loopback port."""

    def __init__(self, app: web.Application, host: str = LOOPBACK, port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None:
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1]
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
