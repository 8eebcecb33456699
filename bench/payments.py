"""Benchmark 2: payment confirmations, signed callbacks in parallel, vs verify-only.

M buyers place an order through the real buy flow; then every invoice is marked paid
in the KryptoExpress emulator and its signed callback body (the emulator's own
``to_api`` + ``sign_callback``) is POSTed to the bot's callback URL, all M at once.
Measured: confirmations/s until every order is delivered (its key message queued in
the outbox, same transaction), and per order the time from its callback POST to the
"Order #N delivered" message being SENT (the Telegram emulator's event time). The
ceiling is an aiohttp handler that only runs ``services.payments.kryptoexpress.verify_signature``
on the same M bodies sent the same way. Runs on SQLite and, when the ``bench`` database
answers, on PostgreSQL.

    python -m bench.payments [--orders M] [--quick] [--no-pg]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from bench.common import (
    PG_BENCH_URL,
    UpdateClock,
    database_env,
    machine,
    pg_available,
    print_json,
    save,
    summary_ms,
)
from bench.load_side import ChatWakeups, Driver, buy_flow, drive, has_text
from db.engine import read_session_factory
from db.models import Order, OutboxMessage
from sandbox.common import LOOPBACK, dumps
from sandbox.kryptoexpress import sign_callback
from services.payments.kryptoexpress import verify_signature as verify_kryptoexpress

FIRST_BUYER = 8_000_000
CALLBACK_PATH = "/payments/kryptoexpress"


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
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int, body: bytes, signature: str) -> None:
            nonlocal bad
            starts[i] = time.time()
            async with http.post(
                url,
                data=body,
                headers={"Content-Type": "application/json", "X-Signature": signature},
            ) as response:
                await response.read()
                if not 200 <= response.status < 300:
                    bad += 1
            durations[i] = time.time() - starts[i]

        await asyncio.gather(*(one(i, b, s) for i, (b, s) in enumerate(bodies)))
    return starts, durations, bad


async def ceiling(bodies: list[tuple[bytes, str]], secret: str) -> dict[str, Any]:
    async def handler(request: web.Request) -> web.Response:
        raw = await request.read()
        if not verify_kryptoexpress(secret, raw, request.headers.get("X-Signature")):
            return web.json_response({"error": "bad signature"}, status=401)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post(CALLBACK_PATH, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        started = time.monotonic()
        _, durations, bad = await post_all(f"http://{LOOPBACK}:{port}{CALLBACK_PATH}", bodies)
        elapsed = time.monotonic() - started
    finally:
        await runner.cleanup()
    return {
        "verified_per_s": round(len(bodies) / elapsed, 1),
        "seconds": round(elapsed, 3),
        "rejected": bad,
        **summary_ms(durations),
    }


class TransactionCount:
    """Every transaction the bot's sessions begin (the outbox sender's included)."""

    def __init__(self) -> None:
        self.count = 0

    def began(self, session: Session, _transaction: Any, _connection: Any) -> None:
        if not session.info.get("bench"):
            self.count += 1


BUY_CHUNK = 100


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _profiler(path: str | None) -> Any:
    """A pyinstrument profiler started now (the confirm phase only), if asked for."""
    if path is None:
        return None
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="disabled")
    profiler.start()
    return profiler


async def run_db(
    orders: int, database_url: str | None, profile: str | None = None
) -> dict[str, Any]:
    from tests.harness import running_env

    with tempfile.TemporaryDirectory() as tmp, database_env(database_url):
        async with running_env(Path(tmp)) as env:
            await env.orc.set_credits(Decimal("1000000"))
            clock = UpdateClock(env.sandbox.telegram)
            driver = Driver(env.sandbox.telegram, env.tg, clock, ChatWakeups(env.sandbox.telegram))
            buyers = list(range(FIRST_BUYER, FIRST_BUYER + orders))
            # Buying is not what is measured: buyers go through the flow BUY_CHUNK at a
            # time (1,000 at once time out on their steps), then all callbacks at once.
            for start in range(0, len(buyers), BUY_CHUNK):
                await drive(driver, buyers[start : start + BUY_CHUNK], package_flow)
            placed = [o for o in await env.orders() if o.provider_payment_id]
            emulator = env.sandbox.kryptoexpress
            secret = env.sandbox.callback_secret
            bodies: list[tuple[bytes, str]] = []
            for order in placed:
                payment = emulator.payments[int(str(order.provider_payment_id))]
                payment.receive(payment.crypto_amount)
                body = dumps(payment.to_api()).encode()
                bodies.append((body, sign_callback(secret, body)))

            url = f"http://{LOOPBACK}:{env.app.web_port}{CALLBACK_PATH}"
            # The bench's own polling reads are not the bot's transactions.
            polls = read_session_factory(env.app.engine)
            transactions = TransactionCount()
            event.listen(Session, "after_begin", transactions.began)
            profiler = _profiler(profile)
            cpu = _cpu_seconds()
            started = time.monotonic()
            starts, durations, bad = await post_all(url, bodies)
            deadline = started + 120
            while True:
                async with polls(info={"bench": True}) as session:
                    done = (
                        await session.execute(
                            select(func.count())
                            .select_from(Order)
                            .where(Order.status == "delivered")
                        )
                    ).scalar_one()
                if done >= len(placed) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.02)
            queued_elapsed = time.monotonic() - started
            cpu = _cpu_seconds() - cpu
            event.remove(Session, "after_begin", transactions.began)
            if profiler is not None and profile is not None:
                profiler.stop()
                html = profile.endswith(".html")
                report = profiler.output_html() if html else profiler.output_text(show_all=False)
                await asyncio.to_thread(Path(profile).write_text, report)
            # Paid -> key message queued (the outbox row, written with the delivery): the
            # bot's latency without the outbox's Telegram pacing (28 msg/s overall).
            async with polls(info={"bench": True}) as session:
                queued_at = dict(
                    (
                        await session.execute(
                            select(OutboxMessage.dedupe_key, OutboxMessage.created_at).where(
                                OutboxMessage.dedupe_key.like("delivered:%")
                            )
                        )
                    ).all()
                )
            to_queued = [
                queued_at[f"delivered:{order.id}"].timestamp() - start
                for order, start in zip(placed, starts, strict=True)
                if f"delivered:{order.id}" in queued_at
            ]

            # Key message SENT: the emulator's event time of the "delivered" message.
            to_sent: list[float] = []
            missing = 0
            for order, start in zip(placed, starts, strict=True):
                try:
                    seq = await driver._await(
                        order.user_id,
                        0,
                        has_text(f"Order #{order.id} delivered"),
                        timeout=max(1.0, deadline - time.monotonic()),
                    )
                except TimeoutError:
                    missing += 1
                    continue
                at = clock.event_at(seq)
                if at is not None:
                    to_sent.append(at - start)
            return {
                "orders": len(placed),
                "callbacks_rejected": bad,
                "delivered": int(done),
                "confirmations_per_s": round(int(done) / queued_elapsed, 1),
                "seconds_to_all_queued": round(queued_elapsed, 3),
                "callback_http": summary_ms(durations),
                "callback_to_key_queued": summary_ms(to_queued),
                "callback_to_key_sent": summary_ms(to_sent),
                "transactions_per_order": round(transactions.count / max(1, len(placed)), 2),
                # The whole process (bot, emulators, the bench's polling) from the first
                # callback to the last delivery: robust to other work on the machine.
                "cpu_ms_per_order": round(cpu * 1000 / max(1, len(placed)), 1),
                "load_1min_at_end": os.getloadavg()[0],
                "key_messages_missing": missing,
                "ceiling": await ceiling(bodies, secret),
            }


async def run(orders: int, *, postgres: bool, profile: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"orders": orders, "sqlite": await run_db(orders, None, profile)}
    if postgres and pg_available():
        result["postgresql"] = await run_db(orders, PG_BENCH_URL)
    else:
        result["postgresql"] = None
    for name in ("sqlite", "postgresql"):
        figures = result[name]
        if figures:
            figures["ratio_to_ceiling"] = round(
                figures["confirmations_per_s"] / figures["ceiling"]["verified_per_s"], 4
            )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument(
        "--profile",
        help="write a pyinstrument profile of the SQLite run's confirm phase (.html or text)",
    )
    args = parser.parse_args(argv)
    orders = args.orders or (30 if args.quick else 200)
    run_all = run(orders, postgres=not args.no_pg, profile=args.profile)
    result = {"machine": machine(), **asyncio.run(run_all)}
    save("payments", result, quick=args.quick)
    print_json(result)
    return result


if __name__ == "__main__":
    main()
