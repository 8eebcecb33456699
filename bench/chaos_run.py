"""The chaos run's driver: buyers, the chaos monkey, the operator refunding, the drain,
and the invariants checked at the end (bench/chaos.py's docstring lists them)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import tempfile
import time
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select

from bench.chaos_buyers import Buyer
from bench.chaos_operator import Operator
from bench.chaos_report import ChaosConfig, ChaosReport, Stats
from bench.chaos_setup import (
    BotProcess,
    bot_env,
    clear_faults,
    install_faults,
    outage_windows,
    prepare_database,
)
from db.engine import create_engine, session_factory
from db.models import ApiKey, Order, OrderEvent, OutboxMessage
from sandbox.provider_control import CryptoPayControl, KryptoExpressControl
from sandbox.runner import (
    ADMIN_CHAT_ID,
    ADMIN_ID,
    free_port,
    start_sandbox,
)
from sandbox.telegram_control import TelegramControl
from services.vault import KeyVault

NON_FINAL = ("new", "paid", "fulfilling", "awaiting_funds")
REF_RE = re.compile(r"#\d+")


# ------------------------------------------------------------------------ run
class ChaosRun:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.stats = Stats()
        self.violations: list[str] = []
        # order id → (provider, payment id) of the invoice the buyer saw
        self.shown: dict[int, tuple[str, str]] = {}
        self.bots: list[BotProcess] = []
        self._buying = True
        self.operator = Operator(self)

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
        self.cp = CryptoPayControl(self.sandbox.cryptopay_url, timeout=60)
        report = ChaosReport(cfg, self.stats)
        try:
            url = await prepare_database(cfg, workdir)
            report.figures["db"] = url.split("://", 1)[0].split("+")[0]
            key = KeyVault.generate_key()
            for index in range(cfg.processes):
                env = bot_env(self.sandbox, url, free_port(), key)
                self.bots.append(BotProcess(index, env, workdir, worker=index > 0))
            # Crypto Pay posts to the one webhook URL of its app: the first replica's
            # (while it is down, Crypto Pay retries and polling confirms).
            self.sandbox.cryptopay.webhook_url = (
                f"{self.bots[0].env['PUBLIC_BASE_URL']}/payments/cryptopay"
            )
            for bot in self.bots:
                await bot.start()
            for bot in self.bots:
                # The first start imports everything cold: on a loaded 2-core machine
                # that took over 60 s.
                await bot.wait_ready(timeout=180.0)
            self.log(f"{len(self.bots)} bot process(es) up; db={url}")
            install_faults(self.sandbox, cfg.fault_rate, cfg.seed)

            started = time.monotonic()
            monkey = asyncio.create_task(self.chaos_monkey())
            operator = asyncio.create_task(self.operator.work(url))
            outages = asyncio.create_task(
                outage_windows(self.sandbox, cfg.seed, self.stats, lambda: self._buying, self.log)
            )
            await self.buyers()
            self.stats.buying_s = time.monotonic() - started
            self._buying = False
            await monkey
            await operator
            await outages
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
            await self.operator.refund_failed(url, final=True)
            await self.drain(url)
            self.stats.drain_s = time.monotonic() - started
            for bot in self.bots:
                await bot.stop()
            await self.check(url, report)
        finally:
            for bot in self.bots:
                await bot.stop()
            self.stats.cryptopay_faults = self.sandbox.cryptopay.faults.hits
            self.stats.faults_injected = (
                self.sandbox.kryptoexpress.faults.hits
                + self.sandbox.openrouter.faults.hits
                + self.stats.cryptopay_faults
            )
            self.stats.callback_attempts = sum(
                len(p.deliveries) for p in self.sandbox.kryptoexpress.payments.values()
            ) + len(self.sandbox.cryptopay.deliveries)
            await self.tg.aclose()
            await self.kx.aclose()
            await self.cp.aclose()
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
                by_payment = {(o.provider, o.provider_payment_id): o for o in orders}
                busy = [o.id for o in orders if o.status in NON_FINAL]
                unconfirmed = [
                    ref
                    for ref in self.paid_refs()
                    if ref in by_payment
                    and by_payment[ref].status not in ("delivered", "failed", "refunded")
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

    def paid_refs(self) -> set[tuple[str, str]]:
        """(provider, payment id) of every invoice fully paid at its provider."""
        kx = {
            ("kryptoexpress", str(p.id))
            for p in self.sandbox.kryptoexpress.payments.values()
            if p.is_paid
        }
        cp = {
            ("cryptopay", str(i.invoice_id))
            for i in self.sandbox.cryptopay.invoices.values()
            if i.status == "paid"
        }
        return kx | cp

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
                created = list(
                    (
                        await session.execute(
                            select(OrderEvent).where(OrderEvent.kind == "invoice_created")
                        )
                    ).scalars()
                )
                keys = {k.user_id: k for k in (await session.execute(select(ApiKey))).scalars()}
        finally:
            await engine.dispose()
        by_payment = {(o.provider, o.provider_payment_id): o for o in orders if o.provider}
        paid_ids = self.paid_refs()
        statuses = Counter(o.status for o in orders)
        report.figures.update(orders=len(orders), statuses=dict(sorted(statuses.items())))
        report.figures["orders_by_provider"] = dict(
            sorted(Counter(o.provider or "none" for o in orders).items())
        )
        report.figures["fallbacks"] = sum(
            1 for e in created if (e.detail or {}).get("fallback_from")
        )

        # 1. Every fully paid order delivered exactly once, or refunded by the operator
        # (then never delivered: its credit is not on the key, check 3).
        paid_orders = []
        cp_invoices = {str(i): inv for i, inv in self.sandbox.cryptopay.invoices.items()}
        for pid in sorted(paid_ids, key=lambda ref: (ref[0], int(ref[1]))):
            order = by_payment.get(pid)
            if order is None:
                v.append(f"{pid[0]} payment {pid[1]} is paid but no order has it")
                continue
            if pid[0] == "cryptopay" and order.status == "delivered":
                # The buyer paid in the order's asset; the order records what was paid.
                paid = cp_invoices[pid[1]].paid
                if (paid["paid_asset"], Decimal(paid["paid_amount"])) != (
                    order.asset,
                    order.crypto_amount,
                ):
                    v.append(f"order #{order.id}: paid {paid} but recorded {order.crypto_amount}")
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
            if order.status == "delivered" and (order.provider, order.provider_payment_id) not in (
                paid_ids
            ):
                v.append(f"order #{order.id} delivered without a full payment")
            if order.status in NON_FINAL:
                v.append(f"order #{order.id} left in {order.status}")
            if (
                order.id in self.shown
                and (order.provider, order.provider_payment_id) != (self.shown[order.id])
            ):
                v.append(f"order #{order.id}: buyer was shown another invoice")
        delivered = [o for o in orders if o.status == "delivered"]
        report.figures.update(
            paid=len(paid_ids),
            delivered=len(delivered),
            refunded=sum(1 for o in orders if o.status == "refunded"),
            paid_by_provider=dict(sorted(Counter(p for p, _ in paid_ids).items())),
            delivered_by_provider=dict(sorted(Counter(o.provider for o in delivered).items())),
        )

        # 1b. Crypto Pay pays a refunded order back at most once, exactly what was paid,
        # and only a refunded order (services' spend id: one per order).
        for transfer in self.sandbox.cryptopay.transfers:
            order_id = int(str(transfer["spend_id"]).removeprefix("refund-order-"))
            order = next((o for o in orders if o.id == order_id), None)
            if order is None or order.status != "refunded" or order.provider != "cryptopay":
                v.append(f"transfer {transfer} for an order that is not a refunded Crypto Pay one")
            elif (transfer["asset"], Decimal(transfer["amount"])) != (
                order.asset,
                order.crypto_amount,
            ):
                v.append(f"order #{order_id}: paid back {transfer}, paid {order.crypto_amount}")
        spends = Counter(t["spend_id"] for t in self.sandbox.cryptopay.transfers)
        v.extend(f"{spend} paid back {n} times" for spend, n in spends.items() if n > 1)
        report.figures["payer_refunds"] = len(self.sandbox.cryptopay.transfers)

        # 2. Delivered messages in the buyers' chats; duplicates of outbox messages.
        duplicates = delivered_dups = 0
        samples: list[str] = []
        chats = {o.user_id for o in orders} | {ADMIN_CHAT_ID}
        for chat in sorted(chats):
            messages = [
                m
                for m in await self.tg.messages(chat)
                if m["from_bot"] and not m.get("photo") and REF_RE.search(m.get("plain") or "")
            ]
            seen = Counter(m["plain"] for m in messages)
            duplicates += sum(n - 1 for n in seen.values())
            samples.extend(f"{chat}: {t[:80]!r} ×{n}" for t, n in seen.items() if n > 1)
            for order in (o for o in delivered if o.user_id == chat):
                n = sum(c for t, c in seen.items() if f"Order #{order.id} delivered" in t)
                if n == 0:
                    v.append(f"order #{order.id}: no delivered message in chat {chat}")
                delivered_dups += max(0, n - 1)
        report.figures.update(duplicates=duplicates, delivered_duplicates=delivered_dups)
        report.figures["duplicate_samples"] = samples[:8]

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
