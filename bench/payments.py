"""Benchmark 2: payment confirmations, signed callbacks in parallel, vs verify-only.

M buyers place an order through the real buy flow; then every invoice is marked paid
in the KryptoExpress emulator and its signed callback body (the emulator's own
``to_api`` + ``sign_callback``) is POSTed to the bot's callback URL, all M at once.
Measured: confirmations/s until every order is delivered (its key message queued in
the outbox, same transaction), per order the time from its callback POST to that
outbox row and to the "Order #N delivered" message being SENT (the Telegram emulator's
event time), transactions per order, and the bot's own CPU per order. The ceiling is
an aiohttp handler in the bot's process that only runs
``services.payments.kryptoexpress.verify_signature`` on the same M bodies sent the same
way. Runs on SQLite and, when the ``bench`` database (BENCH_DATABASE_URL) answers, on
PostgreSQL.

The emulators, the buyers and the callback POSTs run in a child process
(bench/payments_side.py), so this process's CPU during the confirm phase is the bot's
alone (every thread: aiosqlite's included).

    python -m bench.payments [--orders M] [--rounds R] [--quick] [--no-pg] [--profile out]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from bench.common import (
    PG_BENCH_URL,
    database_env,
    machine,
    pg_available,
    print_json,
    save,
    summary_ms,
)
from bench.updates import REPO, _json_line
from db.engine import read_session_factory
from db.models import Order, OutboxMessage, Payment
from sandbox.common import LOOPBACK
from services.payments.kryptoexpress import verify_signature as verify_kryptoexpress

CALLBACK_PATH = "/payments/kryptoexpress"
# The confirm phase is given this long to deliver every order.
CONFIRM_TIMEOUT = 300.0
# How often this process looks for the last delivery (a count query: cheap, and the
# rate itself is taken from the rows' timestamps, not from this polling).
POLL_SECONDS = 0.05


class TransactionCount:
    """Every transaction the bot's sessions begin (the outbox sender's included)."""

    def __init__(self) -> None:
        self.count = 0

    def began(self, session: Session, _transaction: Any, _connection: Any) -> None:
        if not session.info.get("bench"):
            self.count += 1


def _cpu_seconds() -> float:
    """CPU time of this process, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _profiler(path: str | None) -> Any:
    """A pyinstrument profiler started now (the confirm phase only), if asked for."""
    if path is None:
        return None
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="disabled")
    profiler.start()
    return profiler


class PaymentsSide:
    """The child process holding the emulators, the buyers and the callback POSTs."""

    def __init__(self, proc: asyncio.subprocess.Process, hello: dict[str, Any]) -> None:
        self.proc = proc
        self.urls: dict[str, str] = hello["urls"]
        self.callback_secret: str = hello["callback_secret"]

    async def ask(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        await self.send(command)
        return await self.answer(timeout)

    async def send(self, command: dict[str, Any]) -> None:
        import json

        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()

    async def answer(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        return await _json_line(self.proc.stdout, timeout)


@contextlib.asynccontextmanager
async def payments_side() -> AsyncIterator[PaymentsSide]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.payments_side",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
        limit=64 * 1024 * 1024,
    )
    try:
        assert proc.stdout is not None
        yield PaymentsSide(proc, await _json_line(proc.stdout, 60.0))
    finally:
        if proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.write(b"stop\n")
                await proc.stdin.drain()
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def verify_only(secret: str) -> AsyncIterator[str]:
    """The ceiling: a handler that only verifies the signature; -> its URL."""

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
        yield f"http://{LOOPBACK}:{port}{CALLBACK_PATH}"
    finally:
        await runner.cleanup()


async def _delivered(polls: Any) -> int:
    async with polls(info={"bench": True}) as session:
        done = await session.execute(
            select(func.count()).select_from(Order).where(Order.status == "delivered")
        )
        return int(done.scalar_one())


async def run_db(
    orders: int, database_url: str | None, profile: str | None = None
) -> dict[str, Any]:
    from bot.app import BotApp
    from db.engine import wipe_postgres
    from processing.scheduler import JobIntervals
    from sandbox.runner import sandbox_settings
    from tests.harness import IDLE
    from tests.harness import database_url as test_database_url

    with tempfile.TemporaryDirectory() as tmp, database_env(database_url):
        async with payments_side() as side:
            url = test_database_url(Path(tmp))
            if url.startswith("postgresql"):
                await wipe_postgres(url)
            app = BotApp(
                sandbox_settings(side.urls, side.callback_secret, url),
                intervals=JobIntervals(
                    payment_poll=IDLE, expiry=IDLE, fulfilment=IDLE, prices=IDLE, funds_recheck=IDLE
                ),
                outbox_idle=0.1,
            )
            await app.start()
            try:
                return await _measure(app, side, orders, profile)
            finally:
                await app.stop()


async def _measure(
    app: Any, side: PaymentsSide, orders: int, profile: str | None
) -> dict[str, Any]:
    bought = await side.ask({"cmd": "buy", "buyers": orders}, CONFIRM_TIMEOUT * 4)
    polls = read_session_factory(app.engine)
    async with polls(info={"bench": True}) as session:
        placed = (
            await session.execute(
                select(Payment.provider_payment_id, Order.id, Order.user_id)
                .join(Order, Order.id == Payment.order_id)
                .order_by(Order.id)
            )
        ).all()
    url = f"http://{LOOPBACK}:{app.web_port}{CALLBACK_PATH}"
    transactions = TransactionCount()
    event.listen(Session, "after_begin", transactions.began)
    load_start = _load()
    profiler = _profiler(profile)
    cpu = _cpu_seconds()
    started = time.monotonic()
    await side.send(
        {
            "cmd": "confirm",
            "url": url,
            "orders": [[int(p), order_id, user_id] for p, order_id, user_id in placed],
        }
    )
    posted = await side.answer(CONFIRM_TIMEOUT)
    deadline = started + CONFIRM_TIMEOUT
    while True:
        done = await _delivered(polls)
        if done >= len(placed) or time.monotonic() > deadline:
            break
        await asyncio.sleep(POLL_SECONDS)
    polled_elapsed = time.monotonic() - started
    cpu = _cpu_seconds() - cpu
    event.remove(Session, "after_begin", transactions.began)
    if profiler is not None and profile is not None:
        profiler.stop()
        html = profile.endswith(".html")
        report = profiler.output_html() if html else profiler.output_text(show_all=False)
        await asyncio.to_thread(Path(profile).write_text, report)
    # Callback -> key message queued (the outbox row, written with the delivery): the
    # bot's latency without the outbox's Telegram pacing (<= 30 msg/s overall). Both
    # clocks are this machine's wall clock.
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
    starts: list[float] = posted["starts"]
    queued = [
        queued_at[f"delivered:{order_id}"].timestamp()
        for (_, order_id, _), start in zip(placed, starts, strict=True)
        if f"delivered:{order_id}" in queued_at
    ]
    to_queued = [
        queued_at[f"delivered:{order_id}"].timestamp() - start
        for (_, order_id, _), start in zip(placed, starts, strict=True)
        if f"delivered:{order_id}" in queued_at
    ]
    # The rate from the rows' own times (first POST -> last key message queued), so the
    # polling's granularity does not count.
    elapsed = (
        max(queued) - min(starts) if queued and done >= len(placed) and starts else polled_elapsed
    )
    sent = await side.answer(CONFIRM_TIMEOUT + 60)
    async with verify_only(side.callback_secret) as ceiling_url:
        verified = await side.ask({"cmd": "ceiling", "url": ceiling_url}, CONFIRM_TIMEOUT)
    count = max(1, len(placed))
    return {
        "orders": len(placed),
        "buy_phase": bought,
        "callbacks_rejected": posted["rejected"],
        "delivered": int(done),
        "confirmations_per_s": round(int(done) / elapsed, 1) if elapsed > 0 else 0.0,
        "seconds_to_all_queued": round(elapsed, 3),
        "callback_http": summary_ms(posted["durations"]),
        "callback_to_key_queued": summary_ms(to_queued),
        "callback_to_key_sent": summary_ms(sent["to_sent"]),
        "transactions_per_order": round(transactions.count / count, 2),
        # This process only (the emulators and the POSTs are the child's), from the
        # first callback to the last delivery.
        "bot_cpu_ms_per_order": round(cpu * 1000 / count, 2),
        # The child's, from the first POST until every key message was sent.
        "load_side_cpu_ms_per_order": round(sent["load_side_cpu_s"] * 1000 / count, 2),
        "load_1min": {"start": load_start, "end": _load()},
        "key_messages_missing": sent["missing"],
        "ceiling": {
            "verified_per_s": round(len(placed) / verified["seconds"], 1),
            "seconds": round(verified["seconds"], 3),
            "rejected": verified["rejected"],
            **summary_ms(verified["durations"]),
        },
    }


async def run(orders: int, *, postgres: bool, profile: str | None = None) -> dict[str, Any]:
    """One round: SQLite, then PostgreSQL when its database answers."""
    result: dict[str, Any] = {"orders": orders, "sqlite": await run_db(orders, None, profile)}
    if postgres and pg_available():
        pg_profile = (
            None
            if profile is None
            else str(Path(profile).with_suffix(".pg" + Path(profile).suffix))
        )
        result["postgresql"] = await run_db(orders, PG_BENCH_URL, pg_profile)
    else:
        result["postgresql"] = None
    for name in ("sqlite", "postgresql"):
        figures = result[name]
        if figures:
            figures["ratio_to_ceiling"] = round(
                figures["confirmations_per_s"] / figures["ceiling"]["verified_per_s"], 4
            )
    return result


SUMMARISED: tuple[tuple[str, ...], ...] = (
    ("confirmations_per_s",),
    ("callback_to_key_queued", "p99_ms"),
    ("callback_to_key_sent", "p99_ms"),
    ("transactions_per_order",),
    ("bot_cpu_ms_per_order",),
    ("load_side_cpu_ms_per_order",),
    ("callbacks_rejected",),
    ("ceiling", "verified_per_s"),
)


def _figure(figures: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = figures
    for key in path:
        value = value[key]
    return float(value)


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """min / median / max per database over the rounds of one order count."""
    out: dict[str, Any] = {}
    for name in ("sqlite", "postgresql"):
        runs = [r[name] for r in rounds if r.get(name)]
        if not runs:
            continue
        figures: dict[str, Any] = {}
        for path in SUMMARISED:
            values = sorted(_figure(f, path) for f in runs)
            figures[".".join(path)] = {
                "min": values[0],
                "median": statistics.median(values),
                "max": values[-1],
            }
        loads = sorted(v for f in runs for v in f["load_1min"].values())
        figures["load_1min"] = {"min": loads[0], "max": loads[-1]}
        out[name] = {"rounds": len(runs), **figures}
    return out


def parse_plan(text: str) -> list[tuple[int, int]]:
    """ "100x3,1000x1" -> [(100, 3), (1000, 1)] (orders at once x rounds)."""
    plan = []
    for part in text.split(","):
        orders, _, rounds = part.strip().partition("x")
        plan.append((int(orders), int(rounds or 1)))
    return plan


async def run_plan(
    plan: list[tuple[int, int]], *, postgres: bool, profile: str | None = None
) -> dict[str, Any]:
    runs = []
    for orders, rounds in plan:
        done = [await run(orders, postgres=postgres, profile=profile) for _ in range(rounds)]
        runs.append({"orders": orders, "rounds": done, "summary": summarise(done)})
    # The single-run figures the page's first table shows: the median-rate SQLite round
    # of the first order count.
    first = sorted(runs[0]["rounds"], key=lambda r: r["sqlite"]["confirmations_per_s"])
    return {**first[len(first) // 2], "runs": runs}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--orders", help='orders at once x rounds, comma-separated (default "100x3,1000x1")'
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument(
        "--profile",
        help="write a pyinstrument profile of each run's confirm phase (.html or text; "
        "the PostgreSQL run's beside it as NAME.pg.EXT)",
    )
    args = parser.parse_args(argv)
    plan = parse_plan(args.orders or ("30x1" if args.quick else "100x3,1000x1"))
    run_all = run_plan(plan, postgres=not args.no_pg, profile=args.profile)
    result = {"machine": machine(), **asyncio.run(run_all)}
    save("payments", result, quick=args.quick)
    print_json(result)
    return result


if __name__ == "__main__":
    main()
