"""The Crypto Pay emulator's ``/control/`` routes and its ``invoice_paid`` webhook sender.

Routes are listed in ``sandbox.cryptopay``'s docstring. Control requests are never
faulted nor logged; errors answer in the API's envelope with a 4xx status.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import ROUND_UP, Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from sandbox.common import dumps, json_response, now_iso
from sandbox.cryptopay_model import (
    ASSETS,
    FIATS,
    PLACES,
    SIGNATURES,
    ApiError,
    InvoiceState,
    json_body,
    positive_decimal,
    sign_webhook,
)

if TYPE_CHECKING:
    from sandbox.cryptopay import CryptoPayEmulator


class ControlRoutes:
    def __init__(self, emulator: CryptoPayEmulator, prefix: str) -> None:
        self.e = emulator
        self.prefix = prefix
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def install(self, app: web.Application) -> None:
        r, c = app.router, self.prefix
        r.add_get(f"{c}/invoices", self.c_invoices)
        r.add_get(f"{c}/invoices/{{id}}", self.c_invoice)
        r.add_post(f"{c}/invoices/{{id}}/pay", self.c_pay)
        r.add_post(f"{c}/invoices/{{id}}/expire", self.c_expire)
        r.add_post(f"{c}/invoices/{{id}}/webhook", self.c_webhook)
        r.add_get(f"{c}/transfers", self.c_transfers)
        r.add_get(f"{c}/balances", self.c_balances)
        r.add_post(f"{c}/balances", self.c_balances)
        r.add_post(f"{c}/users", self.c_users)
        r.add_post(f"{c}/settings", self.c_settings)
        r.add_post(f"{c}/rates", self.c_rates)
        r.add_post(f"{c}/drop_answer", self.c_drop_answer)
        r.add_get(f"{c}/deliveries", self.c_deliveries)
        r.add_post(f"{c}/reset", self.c_reset)

    async def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        await self.cancel_tasks()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -------------------------------------------------------------- webhook
    async def _deliver(self, body: bytes, headers: dict[str, str], n: int) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.e.webhook_timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        for attempt, delay in enumerate(self.e.webhook_retry_delays, start=1):
            await asyncio.sleep(delay)
            record: dict[str, Any] = {"delivery": n, "attempt": attempt, "at": now_iso()}
            record |= {"status": None, "signed": "crypto-pay-api-signature" in headers}
            record["body"] = body.decode()
            try:
                async with self._session.post(
                    self.e.webhook_url or "", data=body, headers=headers
                ) as r:
                    await r.read()
                    record["status"] = r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
            records.append(record)
            self.e.deliveries.append(record)
            if record["status"] is not None and 200 <= record["status"] < 300:
                break
        return records

    async def send_webhook(self, invoice: InvoiceState, options: dict[str, Any]) -> list[Any]:
        if not self.e.webhook_url:
            return []
        signature = options.get("signature", "valid")
        if signature not in SIGNATURES:
            raise ApiError(400, "SIGNATURE_INVALID")
        payload = options.get("body_override")
        if payload is None:  # one update, so duplicates carry the same update_id
            payload = {
                "update_id": next(self.e.update_ids), "update_type": "invoice_paid",
                "request_date": now_iso(), "payload": invoice.to_api(),
            }  # fmt: skip
        body = dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if signature != "none":
            key = self.e.token if signature == "valid" else self.e.token + "-forged"
            headers["crypto-pay-api-signature"] = sign_webhook(key, body)
        runs = [
            self._deliver(body, headers, n) for n in range(1, int(options.get("deliveries", 1)) + 1)
        ]

        async def run() -> list[Any]:
            if options.get("concurrent"):
                return [r for rs in await asyncio.gather(*runs) for r in rs]
            return [r for coro in runs for r in await coro]

        if options.get("wait", True):
            return await run()
        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return []

    # -------------------------------------------------------------- control
    def _invoice(self, request: web.Request) -> InvoiceState:
        invoice = self.e.invoices.get(int(request.match_info["id"]))
        if invoice is None:
            raise ApiError(404, "INVOICE_NOT_FOUND")
        return invoice

    async def c_invoices(self, request: web.Request) -> web.Response:
        return json_response([i.to_api() for i in self.e.invoices.values()])

    async def c_invoice(self, request: web.Request) -> web.Response:
        return json_response(self._invoice(request).to_api())

    async def c_pay(self, request: web.Request) -> web.Response:
        """The buyer pays in ``asset`` (any accepted one; default the first)."""
        invoice, body = self._invoice(request), await json_body(request)
        invoice.refresh()
        if invoice.status != "active":
            raise ApiError(409, f"INVOICE_{invoice.status.upper()}")
        if invoice.currency_type == "crypto":
            asset, amount = str(invoice.asset), Decimal(invoice.amount)
        else:
            asset = str(body.get("asset") or invoice.accepted_assets[0])
            if asset not in invoice.accepted_assets:
                raise ApiError(400, "ASSET_NOT_ACCEPTED")
            usd = Decimal(invoice.amount) * FIATS[str(invoice.fiat)]
            step = Decimal(1).scaleb(-PLACES.get(asset, 8))
            amount = (usd / self.e.rates[asset]).quantize(step, rounding=ROUND_UP)
        rate = self.e.rates[asset]
        invoice.status = "paid"
        invoice.paid = {
            "paid_asset": asset, "paid_amount": format(amount, "f"),
            "paid_usd_rate": format(rate, "f"), "fee_asset": asset, "fee_amount": "0",
            "paid_at": now_iso(), "paid_anonymously": bool(body.get("paid_anonymously", False)),
        }  # fmt: skip
        if invoice.fiat:
            invoice.paid["paid_fiat_rate"] = format(rate / FIATS[invoice.fiat], "f")
        self.e.balances[asset] += amount
        deliveries = await self.send_webhook(invoice, body) if body.get("webhook", True) else []
        return json_response({"invoice": invoice.to_api(), "deliveries": deliveries})

    async def c_expire(self, request: web.Request) -> web.Response:
        invoice = self._invoice(request)
        if invoice.status == "active":
            invoice.expires_at = datetime.now(UTC) - timedelta(seconds=1)
            invoice.status = "expired"
        return json_response({"invoice": invoice.to_api()})

    async def c_webhook(self, request: web.Request) -> web.Response:
        invoice = self._invoice(request)
        deliveries = await self.send_webhook(invoice, await json_body(request))
        return json_response({"invoice": invoice.to_api(), "deliveries": deliveries})

    async def c_transfers(self, request: web.Request) -> web.Response:
        return json_response(self.e.transfers)

    async def c_balances(self, request: web.Request) -> web.Response:
        for asset, value in (await json_body(request)).items():
            if asset not in ASSETS:
                raise ApiError(400, "ASSET_INVALID")
            self.e.balances[asset] = Decimal(str(value))
        return json_response({a: format(v, "f") for a, v in self.e.balances.items()})

    async def c_users(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        self.e.not_started |= {int(u) for u in body.get("not_started", [])}
        self.e.not_started -= {int(u) for u in body.get("started", [])}
        return json_response({"not_started": sorted(self.e.not_started)})

    async def c_settings(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        if "transfers_enabled" in body:
            self.e.transfers_enabled = bool(body["transfers_enabled"])
        if "webhook_url" in body:
            self.e.webhook_url = body["webhook_url"]
        settings = {
            "transfers_enabled": self.e.transfers_enabled,
            "webhook_url": self.e.webhook_url,
        }
        return json_response(settings)

    async def c_rates(self, request: web.Request) -> web.Response:
        self.e.rates.update(
            {a: positive_decimal(v, "rate") for a, v in (await json_body(request)).items()}
        )
        return json_response({a: format(v, "f") for a, v in self.e.rates.items()})

    async def c_drop_answer(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        self.e.drop_after[str(body["method"])] = int(body.get("count", 1))
        return json_response(self.e.drop_after)

    async def c_deliveries(self, request: web.Request) -> web.Response:
        return json_response(self.e.deliveries)

    async def c_reset(self, request: web.Request) -> web.Response:
        await self.e.reset()
        return json_response({"ok": True})
