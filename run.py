"""Entry point: wiring only.

python run.py                      # real Telegram, settings from the environment / .env
python run.py --sandbox            # offline: local emulators + a web chat, nothing to configure
python run.py --sandbox --demo     # offline, plays one purchase and prints it
python run.py --worker             # a replica without Telegram polling (see docs/reliability.md)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path

from bot.settings import ConfigError, load_settings


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # aiogram logs every handled update at INFO; httpx every request: too chatty.
    logging.getLogger("aiogram.event").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def _until_stopped() -> None:
    """Run until SIGINT or SIGTERM, then return so ``finally`` blocks close everything."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _run_real(worker: bool = False) -> int:
    from bot.app import BotApp

    try:
        settings = load_settings(production=True)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return 2
    app = BotApp(settings)
    try:
        # A worker replica takes no Telegram updates: only one process may long-poll
        # getUpdates (in production, replicas run in webhook mode instead).
        await app.start(polling=not worker)
        await _until_stopped()
    finally:
        await app.stop()
    return 0


async def _run_sandbox(demo: bool, started_at: float) -> int:
    from bot.app import BotApp
    from sandbox.demo import play_demo
    from sandbox.runner import start_sandbox, temp_sqlite_url
    from sandbox.webchat import WebChat

    sandbox = await start_sandbox()
    with tempfile.TemporaryDirectory(prefix="aitokenbot-") as tmp:
        settings = sandbox.settings(temp_sqlite_url(Path(tmp)), payment_poll_seconds=5)
        app = BotApp(settings)
        stack = contextlib.AsyncExitStack()
        try:
            await app.start()
            if demo:
                return await play_demo(sandbox, settings)
            webchat = WebChat(sandbox, app, started_at=started_at)
            stack.push_async_callback(webchat.stop)
            print(f"Open the web chat: {await webchat.start()}", flush=True)
            print("AI Token Bot sandbox is running (Ctrl+C to stop).", flush=True)
            print(f"  Telegram emulator control: {sandbox.telegram_url}/control/state")
            print(f"  OpenRouter emulator:       {sandbox.openrouter_url}/control/keys")
            print(f"  KryptoExpress emulator:    {sandbox.kryptoexpress_url}/control/payments")
            print(
                f"  Bot HTTP server:           http://{settings.web_host}:{app.web_port}/healthz",
                flush=True,
            )
            await _until_stopped()
        finally:
            await stack.aclose()
            await app.stop()
            await sandbox.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="AI Token Bot")
    parser.add_argument(
        "--sandbox", action="store_true", help="run offline against local emulators"
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="with --sandbox: play one purchase and print the transcript",
    )
    parser.add_argument(
        "--worker",
        action="store_true",
        help="replica: HTTP callbacks, scheduled jobs and outbox, but no Telegram polling",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    started_at = time.monotonic()
    args = parser.parse_args(argv)
    if args.demo and not args.sandbox:
        parser.error("--demo needs --sandbox")
    _logging(args.verbose)
    if args.worker and args.sandbox:
        parser.error("--worker is for real mode")
    runner = _run_sandbox(args.demo, started_at) if args.sandbox else _run_real(args.worker)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(runner)
    return 130


if __name__ == "__main__":
    sys.exit(main())
