"""What every outgoing HTTP request (services/http.py, httpx → httpcore) costs in imports.

httpcore decides between asyncio and trio by ``import sniffio`` each time it sets up one
of its locks or events: about 11 times per request. Without sniffio installed, each is a
failed import, and Python caches no failure: every one scans ``sys.path`` again (~70 µs
each on our 2-core machine, about 30 % of a loopback request's CPU: 3.3 → 2.3 ms per
request with client and server in one process, bench/hotspots.md section 7). Installed,
it is a lookup in ``sys.modules``.
"""

from __future__ import annotations

import builtins
from typing import Any

from aiohttp import web

from sandbox.common import LOOPBACK
from services.errors import ExternalError
from services.http import JsonHttp


async def test_a_request_attempts_no_failing_import() -> None:
    async def ok(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/ok", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    http = JsonHttp("test", f"http://{LOOPBACK}:{port}", error_type=ExternalError)
    failed: list[str] = []
    real_import = builtins.__import__

    def watching(name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return real_import(name, *args, **kwargs)
        except ImportError:
            failed.append(name)
            raise

    try:
        await http.request("GET", "/ok")  # the first request's own imports are done
        builtins.__import__ = watching
        try:
            for _ in range(3):
                assert await http.request("GET", "/ok") == {"ok": True}
        finally:
            builtins.__import__ = real_import
    finally:
        await http.aclose()
        await runner.cleanup()
    assert failed == [], failed
