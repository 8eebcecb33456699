"""Benchmark 1: update handling, the real buy flow vs a bare aiogram echo bot.

N synthetic buyers walk the buy flow at once through the Telegram emulator, the real
dispatcher, middlewares and database (``/start`` → 🤖 AI Tokens → a package or ✏️ Custom
amount + typed amount → USDT (quote) → ✅ Confirm (invoice at the KryptoExpress
emulator)). Latency of one step = emulator time of the bot's answering Bot API call
minus emulator time the update was injected. The ceiling is the same driver against a
Dispatcher with one message handler (``answer``) and one callback handler (``answer`` +
``edit_text``): the same number of updates of the same kinds.

    python -m bench.updates [--buyers N] [--quick] [--profile out.html]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiogram import Bot, Dispatcher, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from bench.common import UpdateClock, database_env, machine, print_json, save, summary_ms
from sandbox.runner import BOT_TOKEN, start_sandbox
from sandbox.telegram import StoredMessage, TelegramEmulator, inline_buttons
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


@dataclass
class Driver:
    """Plays buyers: injects through the control API, waits in-process (no polling)."""

    emulator: TelegramEmulator
    tg: TelegramControl
    clock: UpdateClock
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    api_calls: int = 0  # Bot API calls the bot made during the drive

    async def _await(self, chat: int, after_seq: int, predicate: Predicate, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            for message in list(self.emulator.messages.get(chat, {}).values()):
                if message.from_bot and message.seq > after_seq and predicate(message):
                    return message.seq
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"chat {chat}: no answer after seq {after_seq}")
            await self.emulator._wait_change(min(left, 1.0))

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


# ---------------------------------------------------------------------- ours
async def run_ours(buyers: int, database_url: str | None = None) -> dict[str, Any]:
    from tests.harness import running_env

    with tempfile.TemporaryDirectory() as tmp, database_env(database_url):
        async with running_env(Path(tmp)) as env:
            clock = UpdateClock(env.sandbox.telegram)
            driver = Driver(env.sandbox.telegram, env.tg, clock)
            ids = list(range(FIRST_BUYER, FIRST_BUYER + buyers))
            elapsed = await drive(driver, ids, buy_flow)
            return figures(driver, elapsed)


# ---------------------------------------------------------------------- bare
def echo_router() -> Router:
    router = Router()
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="echo", callback_data="echo")]]
    )

    @router.message()
    async def on_message(message: Message) -> None:
        await message.answer(message.text or "?", reply_markup=keyboard)

    @router.callback_query()
    async def on_callback(callback: CallbackQuery) -> None:
        await callback.answer()
        if isinstance(callback.message, Message):
            await callback.message.edit_text(f"pressed {callback.id}", reply_markup=keyboard)

    return router


@contextlib.asynccontextmanager
async def bare_bot(telegram_url: str) -> AsyncIterator[None]:
    bot = Bot(BOT_TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(telegram_url)))
    dp = Dispatcher()
    dp.include_router(echo_router())
    polling = asyncio.create_task(
        dp.start_polling(bot, handle_signals=False, close_bot_session=False, polling_timeout=20)
    )
    try:
        yield
    finally:
        with contextlib.suppress(RuntimeError):
            await dp.stop_polling()
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
        await bot.session.close()


async def run_bare(buyers: int) -> dict[str, Any]:
    sandbox = await start_sandbox()
    tg = TelegramControl(sandbox.telegram_url)
    try:
        async with bare_bot(sandbox.telegram_url):
            clock = UpdateClock(sandbox.telegram)
            driver = Driver(sandbox.telegram, tg, clock)
            ids = list(range(FIRST_BUYER, FIRST_BUYER + buyers))
            elapsed = await drive(driver, ids, echo_flow)
            return figures(driver, elapsed)
    finally:
        await tg.aclose()
        await sandbox.stop()


async def run(buyers: int, *, database_url: str | None = None) -> dict[str, Any]:
    bare = await run_bare(buyers)
    ours = await run_ours(buyers, database_url)
    return {
        "buyers": buyers,
        "ours": ours,
        "bare": bare,
        "throughput_ratio": round(ours["updates_per_s"] / bare["updates_per_s"], 3)
        if bare["updates_per_s"]
        else None,
        "p50_ratio": round(ours["p50_ms"] / bare["p50_ms"], 2) if bare["p50_ms"] else None,
        "p99_ratio": round(ours["p99_ms"] / bare["p99_ms"], 2) if bare["p99_ms"] else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buyers", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", help="write a pyinstrument HTML profile of our run")
    args = parser.parse_args(argv)
    buyers = args.buyers or (40 if args.quick else 200)
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="enabled")
        with profiler:
            result = asyncio.run(run_ours(buyers))
        Path(args.profile).write_text(profiler.output_html())
        print(profiler.output_text(unicode=False, color=False, show_all=False))
        print_json(result)
        return result
    result = {"machine": machine(), **asyncio.run(run(buyers))}
    save("updates", result, quick=args.quick)
    print_json(result)
    return result


if __name__ == "__main__":
    main()
