"""Entry point: wiring only.

python run.py                      # real Telegram, settings from the environment / .env
python run.py --sandbox            # offline: local emulators + a web chat, nothing to configure
python run.py --sandbox --demo     # offline, plays one purchase and prints it
python run.py --worker             # a replica without Telegram polling (see docs/reliability.md)
python run.py --rotate-keys        # re-encrypt stored keys with the newest ENCRYPTION_KEY, exit
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
from services.logcontext import configure_logging


def _logging(verbose: bool, log_format: str = "text") -> None:
    configure_logging(log_format, logging.INFO if verbose else logging.WARNING)
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


async def _run_real(worker: bool = False, verbose: bool = False) -> int:
    from bot.app import BotApp

    try:
        settings = load_settings(production=True)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return 2
    _logging(verbose, settings.log_format)
    app = BotApp(settings)
    try:
        # A worker replica takes no Telegram updates: only one process may long-poll
        # getUpdates (in production, replicas run in webhook mode instead).
        await app.start(polling=not worker)
        await _until_stopped()
    finally:
        await app.stop()
    return 0


async def _rotate_keys() -> int:
    from db.engine import create_engine, session_factory
    from processing.keyrotation import rotate_keys
    from services.vault import KeyVault

    try:
        settings = load_settings()
        if settings.encryption_key is None or not settings.encryption_key.get_secret_value():
            raise ConfigError("ENCRYPTION_KEY is required but not set")
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    engine = create_engine(settings.database_url)
    try:
        vault = KeyVault(settings.encryption_key.get_secret_value())
        report = await rotate_keys(session_factory(engine), vault)
    finally:
        await engine.dispose()
    print(f"rotated {report.rotated} stored key(s) to the newest ENCRYPTION_KEY")
    if report.changed_meanwhile:
        print(f"{report.changed_meanwhile} key(s) changed during the run: run it again")
    if report.unreadable:
        ids = ", ".join(str(i) for i in report.unreadable)
        print(f"no listed ENCRYPTION_KEY opens api_keys id(s): {ids}", file=sys.stderr)
        return 1
    return 0


async def _run_sandbox(demo: bool, started_at: float) -> int:
    from bot.app import BotApp
    from sandbox.demo import play_demo
    from sandbox.runner import SANDBOX_PAYMENT_PROVIDERS, start_sandbox, temp_sqlite_url
    from sandbox.webchat import WebChat

    sandbox = await start_sandbox()
    with tempfile.TemporaryDirectory(prefix="aitokenbot-") as tmp:
        settings = sandbox.settings(
            temp_sqlite_url(Path(tmp)),
            payment_poll_seconds=5,
            payment_providers=SANDBOX_PAYMENT_PROVIDERS,
        )
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
            print(f"  Crypto Pay emulator:       {sandbox.cryptopay_url}/control/invoices")
            bot_http = f"http://{settings.web_host}:{app.web_port}"
            print(f"  Bot readiness and metrics: {bot_http}/readyz  {bot_http}/metrics", flush=True)
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
    parser.add_argument(
        "--rotate-keys",
        action="store_true",
        help="re-encrypt every stored key with the newest ENCRYPTION_KEY, report the count, exit",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    started_at = time.monotonic()
    args = parser.parse_args(argv)
    if args.demo and not args.sandbox:
        parser.error("--demo needs --sandbox")
    _logging(args.verbose)
    if args.worker and args.sandbox:
        parser.error("--worker is for real mode")
    if args.rotate_keys and (args.sandbox or args.worker):
        parser.error("--rotate-keys runs alone")
    if args.rotate_keys:
        runner = _rotate_keys()
    elif args.sandbox:
        runner = _run_sandbox(args.demo, started_at)
    else:
        runner = _run_real(args.worker, args.verbose)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(runner)
    return 130


if __name__ == "__main__":
    sys.exit(main())
