"""The load side of the update benchmark: the emulators and the buyers, in a process of
their own.

Run by ``bench.updates`` as a child (``python -m bench.load_side --flow buy|echo
--buyers N``), so the bot's process spends its CPU on the bot alone: the emulators'
JSON work and the driver's waiting used to share the bot's event loop and counted as
the bot's time. The driver wakes a buyer only when its own chat changes (the emulator's
change signal woke every waiting buyer on every Bot API call, O(buyers) per update).

Protocol, one JSON object per line: the child prints ``{"urls": ..., "callback_secret":
...}`` once the emulators listen, reads ``go``, drives, prints the figures (with its
own CPU seconds), then waits for ``stop`` (or end of input) and shuts down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common import UpdateClock, summary_ms
from sandbox.runner import start_sandbox
from sandbox.telegram import StoredMessage, TelegramEmulator, inline_buttons
from sandbox.telegram.model import Event
from sandbox.telegram_control import TelegramControl

FIRST_BUYER = 7_000_000
Predicate = Callable[[StoredMessage], bool]


def has_button(label: str) -> Predicate:
    def check(message: StoredMessage) -> bool:
        return not message.deleted and any(
            b["text"] == label for row in inline_buttons(message.reply_markup) for b in row
        )

    return check


def has_photo_with(label: str) -> Predicate:
    button = has_button(label)
    return lambda m: m.photo is not None and button(m)


def has_text(fragment: str) -> Predicate:
    return lambda m: not m.deleted and fragment in m.plain


def anything(message: StoredMessage) -> bool:
    return not message.deleted


class ChatWakeups:
    """Wakes the buyer waiting on a chat when a Bot API call touches that chat, and no
    one else. Wraps the emulator's event log on this instance only."""

    def __init__(self, emulator: TelegramEmulator) -> None:
        self.waiting: dict[int, asyncio.Event] = {}
        log = emulator._log

        def logged(event: Event) -> None:
            log(event)
            try:
                chat = int(event.chat_id) if event.chat_id is not None else None
            except ValueError:  # an @username: no buyer waits on it
                chat = None
            waiter = self.waiting.get(chat) if chat is not None else None
            if waiter is not None:
                waiter.set()

        emulator._log = logged  # type: ignore[method-assign]

    def arm(self, chat: int) -> asyncio.Event:
        event = self.waiting[chat] = asyncio.Event()
        return event


@dataclass
class Driver:
    """Plays buyers: injects through the control API, waits in-process (no polling)."""

    emulator: TelegramEmulator
    tg: TelegramControl
    clock: UpdateClock
    wakeups: ChatWakeups
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    api_calls: int = 0  # Bot API calls the bot made during the drive

    async def _await(self, chat: int, after_seq: int, predicate: Predicate, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            # Armed before the check, so a change between check and wait is not missed.
            changed = self.wakeups.arm(chat)
            for message in list(self.emulator.messages.get(chat, {}).values()):
                if message.from_bot and message.seq > after_seq and predicate(message):
                    return message.seq
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"chat {chat}: no answer after seq {after_seq}")
            try:
                async with asyncio.timeout(min(left, 1.0)):
                    await changed.wait()
            except TimeoutError:
                pass

    async def step(
        self, chat: int, action: str, arg: str, predicate: Predicate, timeout: float = 30.0
    ) -> None:
        before = self.clock.seq()
        if action == "text":
            sent = await self.tg.send_text(chat, arg)
        else:
            sent = await self.tg.press(chat, arg, match="prefix")
        seq = await self._await(chat, before, predicate, timeout)
        answered = self.clock.event_at(seq)
        injected = self.clock.injected.get(int(sent["update_id"]))
        if answered is not None and injected is not None:
            self.latencies.append(max(0.0, answered - injected))


def buy_flow(buyer: int) -> list[tuple[str, str, Predicate]]:
    steps: list[tuple[str, str, Predicate]] = [
        ("text", "/start", has_button("🤖 AI Tokens")),
        ("press", "🤖 AI Tokens", has_button("✏️ Custom amount")),
    ]
    if buyer % 2:
        steps += [
            ("press", "✏️ Custom amount", has_text("How many tokens?")),
            ("text", "500000", has_button("USDT")),
        ]
    else:
        steps.append(("press", "Starter", has_button("USDT")))
    steps += [
        ("press", "USDT", has_button("✅ Confirm order")),
        ("press", "✅ Confirm order", has_photo_with("🔄 Check payment")),
    ]
    return steps


def echo_flow(buyer: int) -> list[tuple[str, str, Predicate]]:
    """Same count and kinds of updates as ``buy_flow`` (text where it types, else a press)."""
    return [
        (kind, "/start" if kind == "text" else "echo", anything) for kind, _, _ in buy_flow(buyer)
    ]


FLOWS: dict[str, Callable[[int], list[tuple[str, str, Predicate]]]] = {
    "buy": buy_flow,
    "echo": echo_flow,
}


async def drive(driver: Driver, buyers: list[int], flow: Callable[[int], Any]) -> float:
    async def one(buyer: int) -> None:
        try:
            for action, arg, predicate in flow(buyer):
                await driver.step(buyer, action, arg, predicate)
        except Exception as exc:  # a failed buyer is reported, not fatal
            driver.failures.append(f"{buyer}: {type(exc).__name__}: {exc}"[:300])

    calls_before = len(driver.emulator.events)
    started = time.monotonic()
    await asyncio.gather(*(one(b) for b in buyers))
    elapsed = time.monotonic() - started
    driver.api_calls = len(driver.emulator.events) - calls_before
    return elapsed


def figures(driver: Driver, elapsed: float) -> dict[str, Any]:
    handled = len(driver.latencies)
    return {
        "updates": handled,
        "seconds": round(elapsed, 3),
        "updates_per_s": round(handled / elapsed, 1) if elapsed else 0.0,
        **summary_ms(driver.latencies),
        "bot_api_calls_per_update": round(driver.api_calls / handled, 2) if handled else 0.0,
        "failures": len(driver.failures),
        "failure_sample": driver.failures[:3],
    }


async def _line(reader: asyncio.StreamReader) -> str:
    return (await reader.readline()).decode().strip()


async def serve(flow: str, buyers: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    sandbox = await start_sandbox(callback_retry_delays=(0, 0.2, 0.4, 0.8, 1.6))
    tg = TelegramControl(sandbox.telegram_url)
    try:
        clock = UpdateClock(sandbox.telegram)
        driver = Driver(sandbox.telegram, tg, clock, ChatWakeups(sandbox.telegram))
        print(json.dumps({"urls": sandbox.urls(), "callback_secret": sandbox.callback_secret}))
        sys.stdout.flush()
        if await _line(reader) != "go":
            return
        cpu = time.process_time()
        elapsed = await drive(driver, list(range(FIRST_BUYER, FIRST_BUYER + buyers)), FLOWS[flow])
        result = {**figures(driver, elapsed), "load_side_cpu_s": time.process_time() - cpu}
        print(json.dumps(result))
        sys.stdout.flush()
        await _line(reader)  # "stop", or end of input when the parent is gone
    finally:
        await tg.aclose()
        await sandbox.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow", choices=sorted(FLOWS), required=True)
    parser.add_argument("--buyers", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.flow, args.buyers))


if __name__ == "__main__":
    main()
