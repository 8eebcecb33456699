"""Pieces every emulator shares: serving on loopback, fault injection, exact JSON numbers.

The emulators stand in for real services in tests and in ``run.py --sandbox``.
They listen on loopback only and never reach the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------- JSON
# One implementation of exact-number JSON for the product and the emulators.
from core.jsonutil import dumps, loads, plain_number  # noqa: E402

__all__ = [
    "LOOPBACK",
    "FaultInjector",
    "FaultRule",
    "RequestLog",
    "Served",
    "dumps",
    "json_response",
    "loads",
    "now_iso",
    "plain_number",
    "read_json_object",
]


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(payload), status=status, content_type="application/json")


async def read_json_object(
    request: web.Request,
    fail: Callable[[str], Exception],
    *,
    required: bool,
    missing: str,
    invalid_json: str,
) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}`` unless ``required``.
    Each refusal raises ``fail(message)``: the emulator's own error, with its wording
    (``missing`` for an empty body, ``invalid_json: <parser error>`` for bad JSON)."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise fail(missing)
        return {}
    try:
        body = loads(raw)
    except ValueError as exc:
        raise fail(f"{invalid_json}: {exc}") from exc
    if not isinstance(body, dict):
        raise fail("Request body must be a JSON object")
    return body


# ------------------------------------------------------------------- request log
def now_iso() -> str:
    """UTC now as the providers write it: milliseconds and a trailing Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RequestLog:
    """Every API request an emulator received (faulted ones too), as the bot sent it.

    Tests assert on this record — what the provider *received* — rather than on
    what the bot believes it sent. Control requests are not recorded.
    """

    def __init__(self, control_prefix: str) -> None:
        self.control_prefix = control_prefix
        self.entries: list[dict[str, Any]] = []
        self._seq = itertools.count(1)

    def clear(self) -> None:
        self.entries = []
        self._seq = itertools.count(1)

    def after(self, seq: int) -> list[dict[str, Any]]:
        return [entry for entry in self.entries if entry["seq"] > seq]

    def install_control_routes(self, app: web.Application) -> None:
        async def list_requests(request: web.Request) -> web.Response:
            try:
                after = int(request.query.get("after", "0"))
            except ValueError:
                raise web.HTTPBadRequest(text="after must be an integer") from None
            return json_response(self.after(after))

        app.router.add_get(f"{self.control_prefix}/requests", list_requests)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(self.control_prefix):
            return await handler(request)
        raw = await request.read()
        try:
            body = loads(raw) if raw.strip() else None
        except ValueError:
            body = None
        entry: dict[str, Any] = {
            "seq": next(self._seq),
            "at": now_iso(),
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "body": body,
            "status": None,
        }
        self.entries.append(entry)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            entry["status"] = exc.status
            raise
        entry["status"] = response.status
        return response


# ------------------------------------------------------------------------- faults
@dataclass
class FaultRule:
    """One injected failure: matches requests and breaks them."""

    path: str = ""  # prefix of the request path; "" matches all
    method: str = "*"
    # status | timeout | drop answer instead of the route; apply_then_status and
    # apply_then_drop let the route act (create, PATCH, …) and then lose its answer,
    # as a provider does when it fails after committing the change.
    mode: str = "status"
    status: int = 503
    body: Any = None
    count: int | None = 1  # how many matching requests; None = until cleared
    rate: float = 1.0  # probability a matching request is hit (chaos runs)
    delay: float = 30.0  # for mode=timeout: how long to hang before answering
    # Query parameters the request must carry (e.g. {"offset": "100"}: one page of a
    # listing); None matches any query.
    query: dict[str, str] | None = None

    def matches(self, request: web.Request) -> bool:
        if self.method != "*" and self.method.upper() != request.method:
            return False
        if self.query and any(request.query.get(k) != v for k, v in self.query.items()):
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
        if rule.mode.startswith("apply_then_"):
            with contextlib.suppress(web.HTTPException):
                await handler(request)  # the change is made; its answer is thrown away
        if rule.mode == "timeout":
            await asyncio.sleep(rule.delay)
        elif rule.mode in ("drop", "apply_then_drop"):
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
