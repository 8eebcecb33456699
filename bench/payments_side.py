"""The load side of the payments benchmark: the emulators, the buyers and the callbacks,
in a process of their own (``python -m bench.payments_side``), as ``bench.load_side``
is for the update benchmark.

The bot's process then spends its CPU on the bot alone: the emulators' handlers (the
OpenRouter key calls, the Telegram sends), the callback POSTs and the waiting for each
buyer's key message used to share its event loop and counted as the bot's time.

Protocol, one JSON object per line. The child prints ``{"urls", "callback_secret"}``
once the emulators listen, then answers commands:

- ``{"cmd": "buy", "buyers": N}``: N buyers walk the buy flow (BUY_CHUNK at a time;
  buying is not what is measured) -> ``{"updates", "failures", ...}``.
- ``{"cmd": "confirm", "url", "orders": [[payment_id, order_id, chat_id], ...]}``:
  every payment is marked received in the KryptoExpress emulator and its signed
  callback (the emulator's own ``to_api`` + ``sign_callback``) POSTed to ``url``, all
  at once -> ``{"starts": [...], "durations": [...], "rejected"}`` (wall-clock
  ``time.time()``, so the bot can compare its outbox rows' ``created_at``); then each
  buyer's "Order #N delivered" message is awaited -> ``{"to_sent": [...], "missing",
  "load_side_cpu_s"}``.
- ``{"cmd": "ceiling", "url"}``: the same bodies POSTed the same way to ``url``.
- ``stop`` (or end of input): shut down.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from decimal import Decimal
from typing import Any

import aiohttp

from bench.common import UpdateClock
from bench.load_side import ChatWakeups, Driver, buy_flow, drive, has_text
from sandbox.common import dumps
from sandbox.kryptoexpress import sign_callback
from sandbox.runner import Sandbox, start_sandbox
from sandbox.telegram_control import TelegramControl

FIRST_BUYER = 8_000_000
# 1,000 buyers at once time out on their steps; buying is not what is measured.
BUY_CHUNK = 100
# Waiting for the key messages (the outbox paces them at <= 30/s overall).
SENT_TIMEOUT = 300.0


def package_flow(buyer: int) -> Any:
    return buy_flow(buyer * 2)  # even: the package path (fewer steps)


async def post_all(
    url: str, bodies: list[tuple[bytes, str]]
) -> tuple[list[float], list[float], int]:
    """POST every body at once; -> (start times, durations, non-2xx count)."""
    starts: list[float] = [0.0] * len(bodies)
    durations: list[float] = [0.0] * len(bodies)
    bad = 0
    connector = aiohttp.TCPConnector(limit=100)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one(i: int, body: bytes, signature: str) -> None:
            nonlocal bad
            starts[i] = time.time()
            try:
                async with http.post(
                    url,
                    data=body,
                    headers={"Content-Type": "application/json", "X-Signature": signature},
                ) as response:
                    await response.read()
                    if not 200 <= response.status < 300:
                        bad += 1
            except (aiohttp.ClientError, TimeoutError):
                bad += 1
            durations[i] = time.time() - starts[i]

        await asyncio.gather(*(one(i, b, s) for i, (b, s) in enumerate(bodies)))
    return starts, durations, bad


class PaymentsSide:
    def __init__(self, sandbox: Sandbox, tg: TelegramControl) -> None:
        self.sandbox = sandbox
        self.clock = UpdateClock(sandbox.telegram)
        self.driver = Driver(sandbox.telegram, tg, self.clock, ChatWakeups(sandbox.telegram))
        self.bodies: list[tuple[bytes, str]] = []

    async def buy(self, buyers: int) -> dict[str, Any]:
        chats = list(range(FIRST_BUYER, FIRST_BUYER + buyers))
        started = time.monotonic()
        for start in range(0, len(chats), BUY_CHUNK):
            await drive(self.driver, chats[start : start + BUY_CHUNK], package_flow)
        return {
            "updates": len(self.driver.latencies),
            "seconds": round(time.monotonic() - started, 1),
            "failures": len(self.driver.failures),
            "failure_sample": self.driver.failures[:3],
        }

    async def confirm(self, url: str, orders: list[list[int]], out: Any) -> None:
        cpu = time.process_time()
        emulator = self.sandbox.kryptoexpress
        secret = self.sandbox.callback_secret
        self.bodies = []
        for payment_id, _, _ in orders:
            payment = emulator.payments[payment_id]
            payment.receive(payment.crypto_amount)
            body = dumps(payment.to_api()).encode()
            self.bodies.append((body, sign_callback(secret, body)))
        starts, durations, bad = await post_all(url, self.bodies)
        out({"starts": starts, "durations": durations, "rejected": bad})
        deadline = time.monotonic() + SENT_TIMEOUT
        to_sent: list[float] = []
        missing = 0
        for (_, order_id, chat), start in zip(orders, starts, strict=True):
            try:
                seq = await self.driver._await(
                    chat,
                    0,
                    has_text(f"Order #{order_id} delivered"),
                    timeout=max(0.0, deadline - time.monotonic()),
                )
            except TimeoutError:
                missing += 1
                continue
            at = self.clock.event_at(seq)
            if at is not None:
                to_sent.append(at - start)
        out({"to_sent": to_sent, "missing": missing, "load_side_cpu_s": time.process_time() - cpu})

    async def ceiling(self, url: str) -> dict[str, Any]:
        started = time.monotonic()
        _, durations, bad = await post_all(url, self.bodies)
        return {"seconds": time.monotonic() - started, "durations": durations, "rejected": bad}


def _out(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    sandbox = await start_sandbox(
        callback_retry_delays=(0, 0.2, 0.4, 0.8, 1.6), total_credits=Decimal("1000000")
    )
    tg = TelegramControl(sandbox.telegram_url)
    try:
        side = PaymentsSide(sandbox, tg)
        _out({"urls": sandbox.urls(), "callback_secret": sandbox.callback_secret})
        while True:
            line = (await reader.readline()).decode().strip()
            if not line or line == "stop":
                return
            command = json.loads(line)
            if command["cmd"] == "buy":
                _out(await side.buy(int(command["buyers"])))
            elif command["cmd"] == "confirm":
                await side.confirm(command["url"], command["orders"], _out)
            elif command["cmd"] == "ceiling":
                _out(await side.ceiling(command["url"]))
    finally:
        await tg.aclose()
        await sandbox.stop()


def main() -> None:
    asyncio.run(serve())


if __name__ == "__main__":
    main()
