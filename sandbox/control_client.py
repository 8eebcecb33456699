"""The plumbing every emulator control client shares: one httpx client, JSON bodies, errors.

Bodies are written with ``dumps`` so Decimals stay exact. A non-2xx answer raises the
client's ``error`` type, carrying the method, path, status and (a prefix of) the body.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, ClassVar, Self

import httpx

from sandbox.common import dumps


class ControlError(RuntimeError):
    body_limit: ClassVar[int] = 500

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[: self.body_limit]}")
        self.status = status
        self.body = body


class ControlClient:
    """Base of the control clients; subclasses add the emulator's own calls."""

    error: ClassVar[type[ControlError]] = ControlError

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # Generous default: pay/resend with wait=true answer only after their callbacks.
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        wait: float | None = None,
    ) -> httpx.Response:
        """One control call; ``wait`` is a server-side long poll, added to the timeout."""
        timeout = httpx.USE_CLIENT_DEFAULT if wait is None else wait + 10.0
        response = await self._http.request(
            method,
            path,
            content=None if body is None else dumps(body).encode(),
            headers={"Content-Type": "application/json"} if body is not None else None,
            params=params,
            timeout=timeout,
        )
        if not response.is_success:
            raise self.error(method, path, response.status_code, response.text)
        return response
