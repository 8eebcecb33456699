"""Chaos run (issue 4 §2): prove that no paid order is lost or delivered twice.

The driver hosts the three emulators in this process and runs the bot as real
subprocesses (``python run.py``, one or two replicas) against them. Many buyers order
at once through the Telegram emulator; every provider callback is delivered 1–5
times, concurrently and out of order, while the polling job races them; about 20 %
of provider and OpenRouter calls fail (5xx, dropped connections, slow answers and
real client timeouts, and calls OpenRouter applies but whose answer is lost); a rare
refused management key makes some orders fail, and an operator refunds failed orders
with the admin ``/refund`` command in the admin group while the run goes on; bot
processes are SIGKILLed at random moments and restarted. Then the faults stop, the
operator refunds what is still failed, the driver waits until nothing is in flight, and
checks:

- every fully paid order is delivered exactly once (one ``delivered`` event; the
  delivered message reaches the buyer; extra copies are counted as at-least-once
  duplicates, allowed by design and reported), or was refunded by the operator (one
  ``refunded`` event, no ``delivered`` one);
- per buyer, the OpenRouter key limit = Σ base_usd of their delivered orders, to the cent;
- no credit without a paid order (Σ key limits = Σ delivered base; keys of buyers
  without a delivered order have no limit);
- no order left in new / paid / fulfilling / awaiting_funds;
- every outbox row was sent (or dropped for an unreachable chat).

    python bench/chaos.py [--orders N] [--db sqlite|postgres] [--processes 1|2] [--seed S]

Exit status 0 when every invariant holds. See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as ``python bench/chaos.py``
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from sqlalchemy import select, text  # noqa: E402

from db.engine import create_engine, session_factory  # noqa: E402
from db.migrate import upgrade_to_head  # noqa: E402
from db.models import ApiKey, Order, OrderEvent, OutboxMessage  # noqa: E402
from sandbox.common import LOOPBACK  # noqa: E402
from sandbox.provider_control import KryptoExpressControl  # noqa: E402
from sandbox.runner import (  # noqa: E402
    ADMIN_CHAT_ID,
    ADMIN_ID,
    BOT_TOKEN,
    KRYPTO_API_KEY,
    MANAGEMENT_KEY,
    Sandbox,
    free_port,
    start_sandbox,
)
from sandbox.telegram_control import TelegramControl, TelegramControlError  # noqa: E402
from services.openrouter import min_lease_seconds  # noqa: E402
from services.vault import KeyVault  # noqa: E402

NON_FINAL = ("new", "paid", "fulfilling", "awaiting_funds")
DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/chaos"
ORDER_RE = re.compile(r"Order #(\d+)")
REF_RE = re.compile(r"#\d+")


@dataclass
class ChaosConfig:
    orders: int = 30
    db: str = "sqlite"  # sqlite | postgres
    processes: int = 1
    seed: int = 1
    kills: int | None = None  # default: 3 + orders // 150
    fault_rate: float = 0.2
    concurrency: int | None = None  # buyers at once; default min(orders, 24)
    drain_timeout: float = 240.0
    database_url: str | None = None  # overrides --db
    keep_dir: bool = False
    verbose: bool = False

    @property
    def kill_count(self) -> int:
        return self.kills if self.kills is not None else 3 + self.orders // 150


@dataclass
class Stats:
    orders_attempted: int = 0
    invoices_seen: int = 0
    buyer_retries: int = 0
    buyers_gave_up: int = 0
    kills: int = 0
    restarts: int = 0
    callbacks_requested: int = 0
    stale_resends: int = 0
    partial_payments: int = 0
    cancelled_then_paid: int = 0
    faults_injected: int = 0
    refunds_asked: int = 0
    refunds_done: int = 0
    refunds_refused: int = 0
    refunds_unanswered: int = 0
    callback_attempts: int = 0
    buying_s: float = 0.0
    drain_s: float = 0.0
    elapsed_s: float = 0.0


@dataclass
class ChaosReport:
    config: ChaosConfig
    stats: Stats
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def table(self) -> str:
        s, f = self.stats, self.figures
        rows = [
            (
                "database / processes / seed",
                f"{f.get('db')} / {self.config.processes} / {self.config.seed}",
            ),
            ("orders created (DB)", f.get("orders", 0)),
            (
                "buy attempts / retries / gave up",
                f"{s.orders_attempted} / {s.buyer_retries} / {s.buyers_gave_up}",
            ),
            ("invoices shown to buyers", s.invoices_seen),
            ("fully paid (provider)", f.get("paid", 0)),
            ("delivered", f.get("delivered", 0)),
            (
                "/refund asked / done / refused / unanswered",
                f"{s.refunds_asked} / {s.refunds_done} / {s.refunds_refused} / "
                f"{s.refunds_unanswered}",
            ),
            ("status counts", f.get("statuses", {})),
            ("partial / cancelled-then-paid", f"{s.partial_payments} / {s.cancelled_then_paid}"),
            ("kills (SIGKILL) / restarts", f"{s.kills} / {s.restarts}"),
            ("faults injected (KX+OR)", s.faults_injected),
            (
                "callback deliveries asked / attempts",
                f"{s.callbacks_requested} / {s.callback_attempts}",
            ),
            ("stale callbacks replayed", s.stale_resends),
            (
                "Σ key limits / Σ delivered base",
                f"${f.get('key_limit_sum')} / ${f.get('delivered_base_sum')}",
            ),
            ("outbox rows (by status)", f.get("outbox", {})),
            ("at-least-once duplicates", f.get("duplicates", 0)),
            ("  of which 'delivered' messages", f.get("delivered_duplicates", 0)),
            (
                "buying / drain / total (s)",
                f"{s.buying_s:.1f} / {s.drain_s:.1f} / {s.elapsed_s:.1f}",
            ),
            ("invariants", "OK" if self.ok else f"{len(self.violations)} VIOLATED"),
        ]
        width = max(len(str(k)) for k, _ in rows)
        lines = [f"  {str(k).ljust(width)}  {v}" for k, v in rows]
        lines += [f"  ✗ {v}" for v in self.violations[:50]]
        return "\n".join(["chaos run", *lines])


# ------------------------------------------------------------------- database
async def prepare_database(config: ChaosConfig, workdir: Path) -> str:
    if config.database_url:
        url = config.database_url
    elif config.db == "postgres":
        url = os.environ.get("TEST_DATABASE_URL") or DEFAULT_PG
    else:
        url = f"sqlite+aiosqlite:///{workdir / 'chaos.db'}"
    if url.startswith("postgresql"):
        await _ensure_pg_database(url)
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("DROP SCHEMA public CASCADE"))
                await conn.execute(text("CREATE SCHEMA public"))
        finally:
            await engine.dispose()
    # Migrate once before any replica starts: two replicas migrating at once race.
    engine = create_engine(url)
    try:
        await upgrade_to_head(engine)
    finally:
        await engine.dispose()
    return url


async def _ensure_pg_database(url: str) -> None:
    """Create the chaos database if missing (kept apart from the test suite's one)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    parsed = make_url(url)
    admin = create_async_engine(
        parsed.set(database="postgres").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    try:
        async with admin.connect() as conn:
            exists = (
                await conn.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database}
                )
            ).scalar()
            if not exists:
                await conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    finally:
        await admin.dispose()


# ------------------------------------------------------------------ processes
class BotProcess:
    """One replica of the bot: ``python run.py`` (``--worker`` = no Telegram polling)."""

    def __init__(self, index: int, env: dict[str, str], workdir: Path, worker: bool) -> None:
        self.index = index
        self.env = env
        self.workdir = workdir
        self.worker = worker
        self.port = int(env["WEB_PORT"])
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = workdir / f"bot{index}.log"
        self.starts = 0

    async def start(self) -> None:
        args = [sys.executable, str(REPO / "run.py")] + (["--worker"] if self.worker else [])
        log = self.log_path.open("ab")
        log.write(f"\n===== start #{self.starts + 1} at {time.time():.3f} =====\n".encode())
        log.flush()
        self.proc = await asyncio.create_subprocess_exec(
            *args, cwd=self.workdir, env=self.env, stdout=log, stderr=log
        )
        log.close()
        self.starts += 1

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.returncode is not None:
                    raise RuntimeError(f"bot{self.index} exited: {self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    answer = await http.get(f"http://{LOOPBACK}:{self.port}/healthz")
                    if answer.status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"bot{self.index} not ready after {timeout}s: {self.tail()}")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=15)
        except TimeoutError:
            await self.kill()

    def tail(self, lines: int = 30) -> str:
        try:
            content = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(content[-lines:])


def bot_env(sandbox: Sandbox, url: str, port: int, encryption_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ", "TMPDIR")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "BOT_TOKEN": BOT_TOKEN,
            "TELEGRAM_API_BASE": sandbox.telegram_url,
            "TELEGRAM_MODE": "polling",
            "ADMIN_CHAT_ID": str(ADMIN_CHAT_ID),
            "ADMIN_IDS": str(ADMIN_ID),
            "DATABASE_URL": url,
            "OPENROUTER_BASE_URL": f"{sandbox.openrouter_url}/api/v1",
            "OPENROUTER_MANAGEMENT_KEY": MANAGEMENT_KEY,
            "KRYPTO_EXPRESS_API_URL": f"{sandbox.kryptoexpress_url}/api",
            "KRYPTO_EXPRESS_API_KEY": KRYPTO_API_KEY,
            "KRYPTO_EXPRESS_CALLBACK_SECRET": sandbox.callback_secret,
            "PAYMENT_PROVIDERS": "kryptoexpress",
            "PUBLIC_BASE_URL": f"http://{LOOPBACK}:{port}",
            "WEB_HOST": LOOPBACK,
            "WEB_PORT": str(port),
            "ENCRYPTION_KEY": encryption_key,  # the same for every replica
            "PAYMENT_POLL_SECONDS": "2",
            "EXPIRY_CHECK_SECONDS": "2",
            "FULFILMENT_RETRY_SECONDS": "1",
            # Short, so a SIGKILLed replica's claims are taken over within the run: the
            # shortest the settings accept (one OpenRouter call with its retries plus a
            # margin, 37 s); production keeps the 300 s default.
            "FULFILMENT_LEASE_SECONDS": str(min_lease_seconds()),
            "STALE_ORDER_SECONDS": "30",
        }
    )
    return env


# --------------------------------------------------------------------- faults
def install_faults(sandbox: Sandbox, rate: float, seed: int) -> None:
    """``rate`` of API calls fail: 5xx, dropped connections, slow answers, real timeouts.

    Each rule draws on its own, so the shares compound to about ``rate``.
    """
    shares: list[tuple[dict[str, Any], float]] = [
        ({"mode": "status", "status": 503}, 0.3),
        ({"mode": "status", "status": 500}, 0.1),
        ({"mode": "drop"}, 0.2),
        # Applied, answer lost: the provider acts (a key limit is set, an invoice made)
        # and then answers 500 or drops the connection.
        ({"mode": "apply_then_status", "status": 500}, 0.1),
        ({"mode": "apply_then_drop"}, 0.1),
        ({"mode": "timeout", "status": 504, "delay": 1.5}, 0.15),  # slow, then 504
        ({"mode": "timeout", "status": 504, "delay": 11.0}, 0.05),  # past the 10 s client timeout
    ]
    injectors = (
        (sandbox.kryptoexpress.faults, "/api/"),
        (sandbox.openrouter.faults, "/api/v1/"),
    )
    for index, (faults, prefix) in enumerate(injectors):
        faults.rng = random.Random(seed * 31 + index)
        for spec, share in shares:
            faults.add({"path": prefix, "count": None, "rate": rate * share, **spec})
    # Now and then OpenRouter refuses the management key on a PATCH (not retried): the
    # order fails, sometimes after an earlier try of the same call landed unanswered, so
    # the key may carry credit the operator is about to refund.
    sandbox.openrouter.faults.add(
        {
            "path": "/api/v1/keys/",
            "method": "PATCH",
            "count": None,
            "rate": rate * 0.5,
            "status": 401,
            "body": {"error": {"code": 401, "message": "Invalid credentials"}},
        }
    )


def clear_faults(sandbox: Sandbox) -> None:
    sandbox.kryptoexpress.faults.clear()
    sandbox.openrouter.faults.clear()


# --------------------------------------------------------------------- buyers
def _buttons(message: dict[str, Any]) -> list[str]:
    return [b.get("text", "") for row in message.get("buttons") or [] for b in row]


class Buyer:
    STEP_TIMEOUT = 8.0
    MAX_TRIES = 6

    def __init__(self, uid: int, orders: int, run: ChaosRun) -> None:
        self.uid = uid
        self.orders = orders
        self.run = run
        self.rng = random.Random(run.rng.getrandbits(64))

    async def go(self) -> None:
        for _ in range(self.orders):
            await self.think()
            await self.one_order()

    async def think(self) -> None:
        """A person reads before tapping: spreads the orders over the kill window."""
        await asyncio.sleep(self.rng.uniform(0.2, 1.5))

    async def _latest_id(self) -> int:
        return max((m["message_id"] for m in await self.run.tg.messages(self.uid)), default=0)

    async def _wait(self, predicate: Any, what: str) -> dict[str, Any] | None:
        try:
            return await self.run.tg.wait_for(
                self.uid, predicate, timeout=self.STEP_TIMEOUT, description=what
            )
        except AssertionError:
            return None

    async def one_order(self) -> None:
        stats = self.run.stats
        tg = self.run.tg
        tokens = self.rng.randrange(60, 1000) * 1000
        asset = self.rng.choice(("USDT", "BTC"))
        for attempt in range(self.MAX_TRIES):
            stats.orders_attempted += 1
            if attempt:
                stats.buyer_retries += 1
            screen = await self._try_buy(tg, tokens, asset)
            if screen is not None:
                await self.pay(screen)
                return
        stats.buyers_gave_up += 1

    async def _try_buy(self, tg: TelegramControl, tokens: int, asset: str) -> dict[str, Any] | None:
        """/buy <tokens> → asset → ✅ Confirm order; the payment screen, or None.

        A step nobody answers (the bot was down) is tapped again; an error answer in
        the chat (a provider failed) sends the buyer back to the start at once.
        """
        before = await self._latest_id()
        await tg.send_text(self.uid, f"/buy {tokens}")
        menu = await self._wait(
            lambda m: m["from_bot"] and m["message_id"] > before, "an answer to /buy"
        )
        if menu is None or asset not in _buttons(menu):
            return None
        await self.think()
        quote = None
        for _ in range(2):
            with contextlib.suppress(TelegramControlError):
                await tg.press(self.uid, asset, message_id=menu["message_id"])
            quote = await self._wait(
                lambda m: (
                    m["message_id"] == menu["message_id"]
                    and not m["deleted"]
                    and "✅ Confirm order" in _buttons(m)
                ),
                "quote",
            )
            if quote is not None:
                break
        if quote is None:
            return None
        await self.think()
        for _ in range(2):
            before = await self._latest_id()
            # A missing keyboard means an earlier tap went through: look for the screen.
            with contextlib.suppress(TelegramControlError):
                await tg.press(self.uid, "✅ Confirm order", message_id=quote["message_id"])
            answer = await self._wait(
                lambda m, after=before: m["from_bot"] and m["message_id"] > after,
                "payment screen",
            )
            if answer is None:
                continue  # nobody answered: tap again
            if answer.get("photo") and "🔄 Check payment" in _buttons(answer):
                return answer
            return None  # an error (e.g. the provider failed): start over
        return None

    async def pay(self, screen: dict[str, Any]) -> None:
        run, stats, rng = self.run, self.run.stats, self.rng
        caption = screen.get("plain") or ""
        match = ORDER_RE.search(caption)
        payment = next(
            (p for p in run.sandbox.kryptoexpress.payments.values() if p.address in caption), None
        )
        if match is None or payment is None:
            run.violations.append(f"payment screen without a known invoice: {caption[:200]!r}")
            return
        stats.invoices_seen += 1
        run.shown[int(match.group(1))] = payment.id
        choice = rng.random()
        if choice < 0.08:
            return  # changed their mind: never pays
        kx = run.kx
        stale = payment.to_api()  # the unpaid object, replayed later out of order
        if choice < 0.12:
            stats.partial_payments += 1
            half = (payment.crypto_amount / 2).quantize(Decimal("0.00000001"))
            await self._pay(kx, payment.id, amount=half)
            return  # only part arrives: the order must stay unpaid
        if choice < 0.17:
            stats.cancelled_then_paid += 1
            with contextlib.suppress(TelegramControlError):
                await run.tg.press(self.uid, "❌ Cancel order", message_id=screen["message_id"])
            await asyncio.sleep(rng.uniform(0.2, 1.5))
        if rng.random() < 0.3:
            stats.partial_payments += 1
            half = (payment.crypto_amount / 2).quantize(Decimal("0.00000001"))
            await self._pay(kx, payment.id, amount=half)
            await asyncio.sleep(rng.uniform(0.1, 1.0))
        await self._pay(kx, payment.id)
        if rng.random() < 0.4:
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            deliveries = rng.randint(1, 3)
            stats.stale_resends += deliveries
            stats.callbacks_requested += deliveries
            await kx.resend(
                payment.id,
                body_override=stale,
                deliveries=deliveries,
                concurrent=True,
                wait=False,
            )
        if rng.random() < 0.3:
            deliveries = rng.randint(1, 2)
            stats.callbacks_requested += deliveries
            await kx.resend(payment.id, deliveries=deliveries, concurrent=True, wait=False)

    async def _pay(self, kx: KryptoExpressControl, payment_id: int, **options: Any) -> None:
        deliveries = self.rng.randint(1, 5)
        self.run.stats.callbacks_requested += deliveries
        await kx.pay(payment_id, deliveries=deliveries, concurrent=True, wait=False, **options)


# ------------------------------------------------------------------------ run
class ChaosRun:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.stats = Stats()
        self.violations: list[str] = []
        self.shown: dict[int, int] = {}  # order id → provider payment id the buyer saw
        self.bots: list[BotProcess] = []
        self._buying = True

    def log(self, message: str) -> None:
        if self.config.verbose:
            print(f"[{time.monotonic() - self._t0:7.1f}s] {message}", flush=True)

    async def execute(self) -> ChaosReport:
        self._t0 = time.monotonic()
        cfg = self.config
        tmp = tempfile.mkdtemp(prefix="chaos-")
        workdir = Path(tmp)
        self.sandbox = await start_sandbox(
            callback_retry_delays=(0, 1, 2, 4, 8), total_credits=Decimal("1000000")
        )
        self.tg = TelegramControl(self.sandbox.telegram_url, timeout=60)
        self.kx = KryptoExpressControl(self.sandbox.kryptoexpress_url, timeout=60)
        report = ChaosReport(cfg, self.stats)
        try:
            url = await prepare_database(cfg, workdir)
            report.figures["db"] = url.split("://", 1)[0].split("+")[0]
            key = KeyVault.generate_key()
            for index in range(cfg.processes):
                env = bot_env(self.sandbox, url, free_port(), key)
                self.bots.append(BotProcess(index, env, workdir, worker=index > 0))
            for bot in self.bots:
                await bot.start()
            for bot in self.bots:
                await bot.wait_ready()
            self.log(f"{len(self.bots)} bot process(es) up; db={url}")
            install_faults(self.sandbox, cfg.fault_rate, cfg.seed)

            started = time.monotonic()
            monkey = asyncio.create_task(self.chaos_monkey())
            operator = asyncio.create_task(self.operator(url))
            await self.buyers()
            self.stats.buying_s = time.monotonic() - started
            self._buying = False
            await monkey
            await operator
            clear_faults(self.sandbox)
            self.log("buying done, faults cleared; draining")
            for bot in self.bots:  # everyone is up for the drain
                if bot.proc is None or bot.proc.returncode is not None:
                    await bot.start()
            for bot in self.bots:
                with contextlib.suppress(RuntimeError):
                    await bot.wait_ready()
            started = time.monotonic()
            await self.drain(url)
            # The operator refunds what is still failed, then the outbox drains again.
            await self.refund_failed(url, final=True)
            await self.drain(url)
            self.stats.drain_s = time.monotonic() - started
            for bot in self.bots:
                await bot.stop()
            await self.check(url, report)
        finally:
            for bot in self.bots:
                await bot.stop()
            self.stats.faults_injected = (
                self.sandbox.kryptoexpress.faults.hits + self.sandbox.openrouter.faults.hits
            )
            self.stats.callback_attempts = sum(
                len(p.deliveries) for p in self.sandbox.kryptoexpress.payments.values()
            )
            await self.tg.aclose()
            await self.kx.aclose()
            await self.sandbox.stop()
            self.stats.elapsed_s = time.monotonic() - self._t0
            report.violations = self.violations
            if report.violations or cfg.keep_dir:
                report.figures["workdir"] = tmp
                for bot in self.bots:
                    report.figures[f"bot{bot.index}_log_tail"] = bot.tail(15)
            else:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
        return report

    async def buyers(self) -> None:
        cfg = self.config
        n_buyers = max(1, (cfg.orders * 2) // 3)
        counts = Counter({b: 1 for b in range(n_buyers)})
        for _ in range(cfg.orders - n_buyers):
            counts[self.rng.randrange(n_buyers)] += 1
        buyers = [Buyer(700_000 + b, n, self) for b, n in sorted(counts.items())]
        limit = asyncio.Semaphore(cfg.concurrency or min(cfg.orders, 24))

        async def one(buyer: Buyer) -> None:
            async with limit:
                await buyer.go()

        await asyncio.gather(*(one(b) for b in buyers))

    async def chaos_monkey(self) -> None:
        """SIGKILL a random replica at random moments; restart it after a short outage."""
        rng = random.Random(self.config.seed * 7 + 1)
        for _ in range(self.config.kill_count):
            # Early enough to hit buyers mid-conversation, payments and deliveries.
            await asyncio.sleep(rng.uniform(1.5, 5.0))
            bot = rng.choice(self.bots)
            await bot.kill()
            self.stats.kills += 1
            self.log(f"SIGKILL bot{bot.index}")
            await asyncio.sleep(rng.uniform(0.1, 2.0))
            await bot.start()
            self.stats.restarts += 1
            with contextlib.suppress(RuntimeError):
                await bot.wait_ready()

    async def operator(self, url: str) -> None:
        """While buyers buy, an admin refunds failed orders now and then with /refund."""
        rng = random.Random(self.config.seed * 11 + 3)
        while self._buying:
            await asyncio.sleep(rng.uniform(2.0, 5.0))
            await self.refund_failed(url)

    async def refund_failed(self, url: str, *, final: bool = False) -> None:
        """``/refund N <note>`` in the admin group for every failed order, through the
        Telegram emulator, as the operator types it. Refused ones (OpenRouter did not
        confirm the key, a delivery held the buyer) are asked again later; the final
        pass, after the faults stop, keeps asking until none is left failed."""
        deadline = time.monotonic() + (120.0 if final else 0.0)
        while True:
            engine = create_engine(url)
            try:
                async with session_factory(engine)() as session:
                    failed = list(
                        (
                            await session.execute(
                                select(Order.id).where(Order.status == "failed").order_by(Order.id)
                            )
                        ).scalars()
                    )
            finally:
                await engine.dispose()
            for order_id in failed:
                await self._refund(order_id)
            if not final or not failed:
                return
            if time.monotonic() > deadline:
                self.violations.append(f"orders still failed after the final refunds: {failed}")
                return
            await asyncio.sleep(1.0)

    async def _refund(self, order_id: int) -> None:
        stats, tg = self.stats, self.tg
        stats.refunds_asked += 1
        before = max((m["message_id"] for m in await tg.messages(ADMIN_CHAT_ID)), default=0)
        await tg.send_text(
            ADMIN_ID, f"/refund {order_id} chaos operator: sent back by hand", chat_id=ADMIN_CHAT_ID
        )
        try:
            answer = await tg.wait_for(
                ADMIN_CHAT_ID,
                lambda m: (
                    m["from_bot"]
                    and m["message_id"] > before
                    and f"Order #{order_id} " in (m["plain"] or "")
                    and "refund" in (m["plain"] or "")
                ),
                # The refund's PATCH and read-back may each take a worst OpenRouter call.
                timeout=75.0,
                description=f"answer to /refund {order_id}",
            )
        except AssertionError:
            stats.refunds_unanswered += 1  # the bot was down: asked again on the next pass
            return
        plain = answer["plain"] or ""
        if "marked refunded (was" in plain:
            stats.refunds_done += 1
        elif "not marked refunded" in plain:
            stats.refunds_refused += 1
        self.log(f"/refund {order_id}: {plain[:90]}")

    async def drain(self, url: str) -> None:
        """Wait until nothing is in flight: orders, paid-but-unrecorded payments, outbox."""
        engine = create_engine(url)
        sessions = session_factory(engine)
        deadline = time.monotonic() + self.config.drain_timeout
        last = ""
        try:
            while True:
                async with sessions() as session:
                    orders = (await session.execute(select(Order))).scalars().all()
                    pending = (
                        await session.execute(
                            select(OutboxMessage.id).where(OutboxMessage.status == "pending")
                        )
                    ).all()
                by_payment = {o.provider_payment_id: o for o in orders}
                busy = [o.id for o in orders if o.status in NON_FINAL]
                unconfirmed = [
                    p.id
                    for p in self.sandbox.kryptoexpress.payments.values()
                    if p.is_paid
                    and str(p.id) in by_payment
                    and by_payment[str(p.id)].status not in ("delivered", "failed", "refunded")
                ]
                state = (
                    f"busy={len(busy)} paid-unconfirmed={len(unconfirmed)} "
                    f"outbox-pending={len(pending)}"
                )
                if state != last:
                    self.log(f"drain: {state}")
                    last = state
                if not busy and not unconfirmed and not pending:
                    return
                if time.monotonic() > deadline:
                    self.violations.append(
                        f"not drained after {self.config.drain_timeout}s: {state} "
                        f"(orders {busy[:10]}, payments {unconfirmed[:10]})"
                    )
                    return
                await asyncio.sleep(0.5)
        finally:
            await engine.dispose()

    # ------------------------------------------------------------------ checks
    async def check(self, url: str, report: ChaosReport) -> None:
        v = self.violations
        engine = create_engine(url)
        sessions = session_factory(engine)
        try:
            async with sessions() as session:
                orders = list((await session.execute(select(Order))).scalars())
                delivered_events = Counter(
                    (
                        await session.execute(
                            select(OrderEvent.order_id).where(OrderEvent.kind == "delivered")
                        )
                    ).scalars()
                )
                refunded_events = Counter(
                    (
                        await session.execute(
                            select(OrderEvent.order_id).where(
                                OrderEvent.kind == "refunded",
                                OrderEvent.actor == f"admin:{ADMIN_ID}",
                            )
                        )
                    ).scalars()
                )
                outbox = list((await session.execute(select(OutboxMessage))).scalars())
                keys = {k.user_id: k for k in (await session.execute(select(ApiKey))).scalars()}
        finally:
            await engine.dispose()
        kx_payments = self.sandbox.kryptoexpress.payments
        by_payment = {o.provider_payment_id: o for o in orders if o.provider_payment_id}
        paid_ids = {str(p.id) for p in kx_payments.values() if p.is_paid}
        statuses = Counter(o.status for o in orders)
        report.figures.update(orders=len(orders), statuses=dict(sorted(statuses.items())))

        # 1. Every fully paid order delivered exactly once, or refunded by the operator
        # (then never delivered: its credit is not on the key, check 3).
        paid_orders = []
        for pid in sorted(paid_ids, key=int):
            order = by_payment.get(pid)
            if order is None:
                v.append(f"provider payment {pid} is paid but no order has it")
                continue
            paid_orders.append(order)
            if order.status == "refunded":
                if refunded_events[order.id] != 1 or delivered_events[order.id] != 0:
                    v.append(
                        f"order #{order.id} refunded with {refunded_events[order.id]} refunded "
                        f"and {delivered_events[order.id]} delivered events"
                    )
                continue
            if order.status != "delivered":
                v.append(f"order #{order.id} paid (payment {pid}) but {order.status}")
            if delivered_events[order.id] != 1:
                v.append(f"order #{order.id}: {delivered_events[order.id]} delivered events")
        for order in orders:
            if order.status == "delivered" and order.provider_payment_id not in paid_ids:
                v.append(f"order #{order.id} delivered without a full payment")
            if order.status in NON_FINAL:
                v.append(f"order #{order.id} left in {order.status}")
            if order.id in self.shown and order.provider_payment_id != str(self.shown[order.id]):
                v.append(f"order #{order.id}: buyer was shown another invoice")
        delivered = [o for o in orders if o.status == "delivered"]
        report.figures.update(
            paid=len(paid_ids),
            delivered=len(delivered),
            refunded=sum(1 for o in orders if o.status == "refunded"),
        )

        # 2. Delivered messages in the buyers' chats; duplicates of outbox messages.
        duplicates = delivered_dups = 0
        chats = {o.user_id for o in orders} | {ADMIN_CHAT_ID}
        for chat in sorted(chats):
            messages = [
                m
                for m in await self.tg.messages(chat)
                if m["from_bot"] and not m.get("photo") and REF_RE.search(m.get("plain") or "")
            ]
            seen = Counter(m["plain"] for m in messages)
            duplicates += sum(n - 1 for n in seen.values())
            for order in (o for o in delivered if o.user_id == chat):
                n = sum(c for t, c in seen.items() if f"Order #{order.id} delivered" in t)
                if n == 0:
                    v.append(f"order #{order.id}: no delivered message in chat {chat}")
                delivered_dups += max(0, n - 1)
        report.figures.update(duplicates=duplicates, delivered_duplicates=delivered_dups)

        # 3. Key limits = Σ base of delivered orders, per buyer and in total (refunded and
        # failed orders are not delivered, so their credit must be off the keys).
        base_by_user: dict[int, Decimal] = defaultdict(lambda: Decimal("0.00"))
        for order in delivered:
            base_by_user[order.user_id] += order.base_usd
        or_keys = [k for k in self.sandbox.openrouter.keys.values() if not k.deleted]
        limits: dict[int, Decimal] = defaultdict(lambda: Decimal("0"))
        for key in or_keys:
            if not key.name.startswith("tg-"):
                continue
            uid = int(key.name[3:])
            if key.limit is not None and key.limit > 0 and uid in limits:
                v.append(f"buyer {uid} has more than one funded key")
            limits[uid] += Decimal(str(key.limit or 0))
        for uid in set(base_by_user) | set(limits):
            if limits[uid].quantize(Decimal("0.01")) != base_by_user[uid]:
                v.append(
                    f"buyer {uid}: key limit {limits[uid]} != Σ delivered base {base_by_user[uid]}"
                )
            if uid in base_by_user and uid not in keys:
                v.append(f"buyer {uid}: delivered orders but no stored key")
        report.figures["key_limit_sum"] = sum(limits.values(), Decimal("0")).quantize(
            Decimal("0.01")
        )
        report.figures["delivered_base_sum"] = sum(base_by_user.values(), Decimal("0.00"))
        if report.figures["key_limit_sum"] != report.figures["delivered_base_sum"]:
            v.append("Σ key limits != Σ delivered base")

        # 4. Outbox: everything sent at least once (or dropped for an unreachable chat).
        report.figures["outbox"] = dict(Counter(row.status for row in outbox))
        for row in outbox:
            if row.status not in ("sent", "dropped"):
                v.append(f"outbox #{row.id} ({row.dedupe_key}) is {row.status}: {row.last_error}")


async def run_chaos(config: ChaosConfig) -> ChaosReport:
    return await ChaosRun(config).execute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=100)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--processes", type=int, choices=(1, 2), default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kills", type=int, default=None)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, SQLite)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    config = ChaosConfig(
        orders=args.orders,
        db=args.db,
        processes=args.processes,
        seed=args.seed,
        kills=args.kills,
        fault_rate=args.fault_rate,
        concurrency=args.concurrency,
        drain_timeout=args.drain_timeout,
        keep_dir=args.keep,
        verbose=not args.quiet,
    )
    report = asyncio.run(run_chaos(config))
    print(report.table())
    for name, value in report.figures.items():
        if name.endswith("_log_tail") or name == "workdir":
            print(f"--- {name} ---\n{value}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
