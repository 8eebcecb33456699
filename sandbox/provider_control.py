"""Async clients for the emulators' ``/control/`` APIs, for tests and the sandbox runner.

Bodies are written with ``dumps`` (Decimals stay exact) and answers parsed with ``loads``
(numbers with a fraction come back as ``Decimal``). A non-2xx answer raises ``ControlError``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sandbox.common import loads
from sandbox.control_client import ControlClient, ControlError

__all__ = ["ControlError", "CryptoPayControl", "KryptoExpressControl", "OpenRouterControl"]


class _ControlClient(ControlClient):
    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        response = await self._request(method, path, body=body, params=params)
        return loads(response.content) if response.content else None

    # Shared by both emulators -------------------------------------------------
    async def requests(self, after: int = 0) -> list[dict[str, Any]]:
        """API requests the emulator received with seq > ``after``, oldest first."""
        result: list[dict[str, Any]] = await self._call(
            "GET", "/control/requests", params={"after": after}
        )
        return result

    async def add_fault(self, **spec: Any) -> Any:
        """Rule spec: path (prefix), method, mode (status|timeout|drop|apply_then_status|
        apply_then_drop), status, body, count (None = until cleared), rate, delay, query
        (parameters the request must carry)."""
        return await self._call("POST", "/control/faults", spec)

    async def clear_faults(self) -> Any:
        return await self._call("DELETE", "/control/faults")

    async def faults(self) -> Any:
        return await self._call("GET", "/control/faults")

    async def reset(self) -> Any:
        return await self._call("POST", "/control/reset")


class OpenRouterControl(_ControlClient):
    async def set_credits(
        self, total_credits: Decimal | None = None, total_usage: Decimal | None = None
    ) -> Any:
        body = {"total_credits": total_credits, "total_usage": total_usage}
        return await self._call("POST", "/control/credits", body)

    async def credits(self) -> Any:
        """``{"data": {"total_credits", "total_usage"}}``."""
        return await self._call("GET", "/control/credits")

    async def keys(self) -> list[dict[str, Any]]:
        """Every key ever created: KeyObject + plaintext ``key`` + ``deleted``."""
        body = await self._call("GET", "/control/keys")
        keys: list[dict[str, Any]] = body["data"]
        return keys

    async def spend(
        self,
        key_hash: str,
        amount: Decimal,
        *,
        daily: Decimal | None = None,
        weekly: Decimal | None = None,
        monthly: Decimal | None = None,
    ) -> dict[str, Any]:
        """Add usage to a key (and the account); returns the KeyObject."""
        body = {"amount": amount, "daily": daily, "weekly": weekly, "monthly": monthly}
        answer = await self._call("POST", f"/control/keys/{key_hash}/spend", body)
        key: dict[str, Any] = answer["data"]
        return key

    async def set_models(self, models: list[dict[str, Any]]) -> Any:
        """Replace the catalogue: ``[{id, name?, prompt, completion, context_length?}]``."""
        return await self._call("POST", "/control/models", models)

    async def set_chat(
        self,
        *,
        delay: float = 0,
        hold_after: int | None = None,
        error_after: int | None = None,
    ) -> Any:
        """Steer the fake model's streams (see ``sandbox.openrouter_model.ChatSettings``)."""
        body = {"delay": Decimal(str(delay)), "hold_after": hold_after, "error_after": error_after}
        return await self._call("POST", "/control/chat", body)

    async def release_chat(self) -> Any:
        return await self._call("POST", "/control/chat/release")

    async def generations(self) -> list[dict[str, Any]]:
        body = await self._call("GET", "/control/generations")
        rows: list[dict[str, Any]] = body["data"]
        return rows


class KryptoExpressControl(_ControlClient):
    """``ref`` is a payment id or its hash."""

    async def payments(self) -> list[dict[str, Any]]:
        """``[{payment, received_amount, missing_amount, expired, callback_secret_set,
        transfers, deliveries}]``."""
        result: list[dict[str, Any]] = await self._call("GET", "/control/payments")
        return result

    async def payment(self, ref: int | str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/control/payments/{ref}")
        return result

    async def pay(self, ref: int | str, **options: Any) -> dict[str, Any]:
        """A transfer arrives. Options: amount, callback, signature, signature_mode,
        deliveries, concurrent, wait. Returns ``{payment, received_amount, deliveries}``."""
        result: dict[str, Any] = await self._call("POST", f"/control/payments/{ref}/pay", options)
        return result

    async def expire(
        self, ref: int | str, callback: bool = False, **options: Any
    ) -> dict[str, Any]:
        body = {"callback": callback, **options}
        result: dict[str, Any] = await self._call("POST", f"/control/payments/{ref}/expire", body)
        return result

    async def resend(self, ref: int | str, **options: Any) -> dict[str, Any]:
        """Send the current object (or ``body_override``) to the callbackUrl again."""
        result: dict[str, Any] = await self._call(
            "POST", f"/control/payments/{ref}/callback", options
        )
        return result

    async def set_prices(self, prices: dict[str, Decimal]) -> Any:
        return await self._call("POST", "/control/prices", prices)

    async def set_options(self, **options: bool) -> Any:
        """Wire variants: ``report_received`` (an undocumented ``receivedAmount``),
        ``include_paid_at``."""
        return await self._call("POST", "/control/options", options)


class CryptoPayControl(_ControlClient):
    """Steers ``sandbox.cryptopay.CryptoPayEmulator``; amounts come back as strings, as
    the API writes them. Delivery options: signature (valid|none|bad), deliveries,
    concurrent, wait, body_override (webhook route only)."""

    async def invoices(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call("GET", "/control/invoices")
        return result

    async def invoice(self, invoice_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/control/invoices/{invoice_id}")
        return result

    async def pay(
        self, invoice_id: int, asset: str | None = None, *, webhook: bool = True, **options: Any
    ) -> dict[str, Any]:
        """The buyer pays in ``asset``; returns ``{invoice, deliveries}``."""
        body = {"asset": asset, "webhook": webhook, **options}
        result: dict[str, Any] = await self._call(
            "POST", f"/control/invoices/{invoice_id}/pay", body
        )
        return result

    async def expire(self, invoice_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", f"/control/invoices/{invoice_id}/expire")
        return result

    async def send_webhook(self, invoice_id: int, **options: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "POST", f"/control/invoices/{invoice_id}/webhook", options
        )
        return result

    async def transfers(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call("GET", "/control/transfers")
        return result

    async def balances(self) -> dict[str, str]:
        result: dict[str, str] = await self._call("GET", "/control/balances")
        return result

    async def set_balances(self, balances: dict[str, Decimal]) -> dict[str, str]:
        result: dict[str, str] = await self._call("POST", "/control/balances", balances)
        return result

    async def set_user_started(self, user_id: int, started: bool) -> Any:
        """Whether the user ever opened @CryptoBot (a transfer to one who did not fails)."""
        key = "started" if started else "not_started"
        return await self._call("POST", "/control/users", {key: [user_id]})

    async def settings(self, **settings: Any) -> dict[str, Any]:
        """``transfers_enabled`` (else 403 METHOD_DISABLED), ``webhook_url``."""
        result: dict[str, Any] = await self._call("POST", "/control/settings", settings)
        return result

    async def set_rates(self, rates: dict[str, Decimal]) -> Any:
        return await self._call("POST", "/control/rates", rates)

    async def drop_answer(self, method: str, count: int = 1) -> Any:
        """The next ``count`` calls of ``method`` are applied, then answered by a dropped
        connection."""
        return await self._call("POST", "/control/drop_answer", {"method": method, "count": count})

    async def deliveries(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call("GET", "/control/deliveries")
        return result
