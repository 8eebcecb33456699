"""Update delivery: the pending queue that getUpdates reads, and the webhook sender."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout

from sandbox.common import dumps, loads
from sandbox.telegram.errors import BotApiError
from sandbox.telegram.model import Webhook
from sandbox.telegram.params import decode_params
from sandbox.telegram.state import EmulatorState

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"

# Telegram's default update set (when allowed_updates is empty or never given).
DEFAULT_EXCLUDED_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})


class UpdateDelivery(EmulatorState):
    def _enqueue(self, kind: str, payload: dict[str, Any]) -> tuple[int, bool]:
        """Queue an update; False if the bot's allowed_updates filter drops it (as Telegram)."""
        update_id = next(self._update_ids)
        allowed = self.allowed_updates
        if (allowed and kind not in allowed) or (not allowed and kind in DEFAULT_EXCLUDED_UPDATES):
            return update_id, False
        self.pending.append({"update_id": update_id, kind: payload})
        self._notify()
        return update_id, True

    async def _webhook_worker(self) -> None:
        """Deliver pending updates one by one to the webhook while one is set."""
        failures = 0
        while not self._closing:
            hook = self.webhook
            if hook is None or not self.pending:
                await self._wait_change(None)
                continue
            update = self.pending[0]
            error = await self._deliver(hook, update)
            still_first = bool(self.pending) and self.pending[0] is update
            if error is None:
                failures = 0
                if still_first:
                    self.pending.pop(0)
                self._notify()
                continue
            hook.last_error_date = int(time.time())
            hook.last_error_message = error
            failures += 1
            if failures > len(self.webhook_retry_delays):
                failures = 0
                if still_first:
                    self.pending.pop(0)  # given up (Telegram would keep trying for a day)
                self._notify()
            else:
                await asyncio.sleep(self.webhook_retry_delays[failures - 1])

    async def _deliver(self, hook: Webhook, update: dict[str, Any]) -> str | None:
        """POST one update; None on success, else the error getWebhookInfo reports."""
        if self._http is None:
            self._http = ClientSession()
        headers = {"Content-Type": "application/json"}
        if hook.secret_token:
            headers[SECRET_HEADER] = hook.secret_token
        try:
            async with self._http.post(
                hook.url,
                data=dumps(update).encode(),
                headers=headers,
                timeout=ClientTimeout(total=self.webhook_timeout),
            ) as response:
                body = await response.read()
                if not 200 <= response.status < 300:
                    return f"Wrong response from the webhook: {response.status} {response.reason}"
        except (ClientError, TimeoutError) as exc:
            return f"Connection failed: {type(exc).__name__}: {exc}"
        await self._run_webhook_reply(body)
        return None

    async def _run_webhook_reply(self, body: bytes) -> None:
        """A webhook may answer with a method call as its response body; Telegram runs it."""
        if not body.strip():
            return
        try:
            payload = loads(body)
        except ValueError:
            return
        if isinstance(payload, dict) and isinstance(payload.get("method"), str):
            params = {k: v for k, v in payload.items() if k != "method"}
            try:
                decoded = decode_params(params)
            except BotApiError:
                return
            await self.call(payload["method"], decoded)

    def _webhook_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "url": "",
            "has_custom_certificate": False,
            "pending_update_count": len(self.pending),
        }
        hook = self.webhook
        if hook is not None:
            info.update(url=hook.url, max_connections=hook.max_connections, ip_address="127.0.0.1")
            if hook.last_error_date is not None:
                info["last_error_date"] = hook.last_error_date
                info["last_error_message"] = hook.last_error_message
            if self.allowed_updates:
                info["allowed_updates"] = self.allowed_updates
        return info
