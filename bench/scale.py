"""Benchmark 4: how the bot's costs grow with 1k, 10k, 100k buyers in the database.

For each size the parent seeds the database in bulk (users, one delivered order and one
OpenRouter key each; the keys are also put straight into the OpenRouter emulator's
memory), keeps the emulators running, and starts the bot in a *child process* so its
peak RSS is the bot's alone. The child reports: start-up time (``BotApp.start``), one
low-quota sweep (``BuyerAlerts.run_quota_sweep``: time and OpenRouter calls), the daily
report query (``AdminLedger.stats`` for yesterday), the funds job's listing of every key
(``SharedFunds.relist_if_due``, run in the background every FUNDS_REMEASURE_SECONDS),
one first delivery to a new buyer (``Fulfilment.fulfil_user``: time and OpenRouter
calls), the idle RSS before the sweep, the peak RSS during the sweep alone (the peak is
reset through /proc/self/clear_refs first) and the peak over the child's whole run.

    python -m bench.scale [--sizes 1000,10000] [--db sqlite,postgresql] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text

from bench.common import PG_BENCH_URL, machine, pg_available, print_json, save
from core.clock import utcnow
from db.engine import create_engine
from db.migrate import upgrade_to_head
from db.models import ApiKey, Order, User
from processing.fulfilment import key_name
from sandbox.openrouter import Key
from sandbox.runner import start_sandbox, temp_sqlite_url
from services.vault import KeyVault

FIRST_BUYER = 10_000_000
BATCH = 5000


def _rows(n: int, encrypted: str, hashes: list[str]) -> tuple[list[dict[str, Any]], ...]:
    now = utcnow()
    yesterday = now - timedelta(days=1)
    users, keys, orders = [], [], []
    for i in range(n):
        uid = FIRST_BUYER + i
        users.append({"id": uid, "language": "en", "first_name": f"B{i}", "created_at": now})
        keys.append(
            {
                "user_id": uid,
                "name": key_name(uid),
                "openrouter_hash": hashes[i],
                "label": "sk-or-v1-abc...1234",
                "encrypted_key": encrypted,
                "limit_usd": Decimal("5.00"),
                "key_shown": True,
                "currency": "USD",
                "created_at": now,
                "updated_at": now,
            }
        )
        orders.append(
            {
                "user_id": uid,
                "status": "delivered",
                "model": "openai/gpt-4o-mini",
                "tokens": 1_000_000,
                "unit_price": Decimal("0.000004"),
                "base_usd": Decimal("4.00"),
                "markup_usd": Decimal("1.00"),
                "total_usd": Decimal("5.00"),
                "currency": "USD",
                "asset": "USDT",
                "provider": "kryptoexpress",
                "provider_payment_id": f"bench-{uid}",
                "created_at": yesterday,
                "updated_at": yesterday,
                "paid_at": yesterday,
                "delivered_at": yesterday,
            }
        )
    return users, keys, orders


async def seed(url: str, n: int, emulator_keys: dict[str, Key], encryption_key: str) -> float:
    """Bulk-insert n buyers; returns seconds. Keys go into the emulator's memory too."""
    started = time.monotonic()
    hashes = []
    for i in range(n):
        key = Key.new(key_name(FIRST_BUYER + i))
        key.limit = Decimal("5")
        # Every 10th buyer has used 85% (an 80% alert is due), the rest 10%.
        key.usage = Decimal("4.25") if i % 10 == 0 else Decimal("0.5")
        emulator_keys[key.hash] = key
        hashes.append(key.hash)
    encrypted = KeyVault(encryption_key).encrypt("sk-or-v1-" + "0" * 64)
    users, keys, orders = _rows(n, encrypted, hashes)
    engine = create_engine(url)
    try:
        if url.startswith("postgresql"):
            async with engine.begin() as conn:
                await conn.execute(text("DROP SCHEMA public CASCADE"))
                await conn.execute(text("CREATE SCHEMA public"))
        await upgrade_to_head(engine)
        async with engine.begin() as conn:
            for table, rows in ((User, users), (ApiKey, keys), (Order, orders)):
                for start in range(0, len(rows), BATCH):
                    await conn.execute(insert(table), rows[start : start + BATCH])
    finally:
        await engine.dispose()
    return time.monotonic() - started


# ------------------------------------------------------------------------ child
async def child(config: dict[str, Any]) -> dict[str, Any]:
    from bot.app import BotApp
    from bot.settings import load_settings
    from processing.scheduler import JobIntervals
    from services.admin_ledger import days_period

    idle = 3600.0
    settings = load_settings(**config["settings"])
    app = BotApp(
        settings,
        # The funds job too: its background listing would land in the sweep's call count.
        intervals=JobIntervals(
            payment_poll=idle, expiry=idle, fulfilment=idle, prices=idle, funds_recheck=idle
        ),
    )
    calls: list[str] = []
    request = app.openrouter._mgmt.request

    async def counted(method: str, path: str, **kwargs: Any) -> Any:
        calls.append(f"{method} {path.split('?')[0]}")
        return await request(method, path, **kwargs)

    app.openrouter._mgmt.request = counted  # type: ignore[method-assign]
    rss_before = _vm("VmRSS")
    started = time.monotonic()
    await app.start()
    startup = time.monotonic() - started
    out: dict[str, Any] = {"startup_s": round(startup, 3)}
    try:
        await asyncio.sleep(0.5)  # let start-up's background work settle
        out["idle_rss_mib"] = round(_vm("VmRSS") / 1024, 1)
        calls.clear()
        profiler = _profiler()
        peak_reset = _reset_peak()
        started, cpu = time.monotonic(), time.process_time()
        sweep = await app.alerts.run_quota_sweep()
        out["sweep_s"] = round(time.monotonic() - started, 3)
        # The bot process's own CPU (every thread): steadier than seconds on a shared box.
        out["sweep_cpu_s"] = round(time.process_time() - cpu, 3)
        if peak_reset:
            out["sweep_peak_rss_mib"] = round(_vm("VmHWM") / 1024, 1)
        _profile_done(profiler, "sweep")
        out["sweep_calls"] = len(calls)
        out["sweep_keys"] = sweep.keys_seen
        out["sweep_alerts"] = sweep.alerts

        yesterday = (utcnow() - timedelta(days=1)).date()
        period = days_period(yesterday, yesterday, settings.timezone)
        started = time.monotonic()
        stats = await app.admin.stats(period)
        out["report_query_s"] = round(time.monotonic() - started, 4)
        out["report_paid"] = stats.paid

        # The funds job lists every key in the background (FUNDS_REMEASURE_SECONDS), so a
        # running bot has the figure when a buyer pays; its cost is reported on its own.
        calls.clear()
        started = time.monotonic()
        await app.fulfilment.shared_funds.relist_if_due()
        out["funds_listing_s"] = round(time.monotonic() - started, 3)
        out["funds_listing_calls"] = len(calls)

        # One first delivery to a new buyer among N existing keys.
        uid = FIRST_BUYER - 1
        now = utcnow()
        async with app.sessions() as session, session.begin():
            await session.execute(
                insert(User), [{"id": uid, "language": "en", "first_name": "N", "created_at": now}]
            )
            row = _rows(1, "", [""])[2][0]
            row.update(
                user_id=uid, status="paid", provider_payment_id="bench-new", delivered_at=None
            )
            row.update(created_at=now, updated_at=now, paid_at=now)
            await session.execute(insert(Order), [row])
        calls.clear()
        profiler = _profiler()
        started = time.monotonic()
        await app.fulfilment.fulfil_user(uid)
        out["first_delivery_s"] = round(time.monotonic() - started, 3)
        _profile_done(profiler, "first_delivery")
        out["first_delivery_calls"] = len(calls)
        out["first_delivery_ok"] = (await _status(app, uid)) == "delivered"
    finally:
        await app.stop()
    out["rss_before_start_mib"] = round(rss_before / 1024, 1)
    out["peak_rss_mib"] = round(_vm("VmHWM") / 1024, 1)
    return out


def _profiler() -> Any:
    """A running pyinstrument profiler when BENCH_PROFILE names a directory."""
    if not os.environ.get("BENCH_PROFILE"):
        return None
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="enabled")
    profiler.start()
    return profiler


def _profile_done(profiler: Any, name: str) -> None:
    if profiler is None:
        return
    profiler.stop()
    out = Path(os.environ["BENCH_PROFILE"]) / f"scale-{name}.txt"
    out.write_text(profiler.output_text(unicode=False, color=False))


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS, so a later VmHWM is the
    peak of what ran since (Linux ≥ 4.0); False where /proc does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _vm(field: str) -> int:
    """A /proc/self/status figure in KiB (VmHWM = peak RSS of this process image;
    ru_maxrss would carry the parent's peak across exec on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


async def _status(app: Any, uid: int) -> str:
    async with app.sessions() as session:
        result = await session.execute(
            text("select status from orders where user_id = :u"), {"u": uid}
        )
        return str(result.scalar_one())


# ----------------------------------------------------------------------- parent
async def measure(n: int, db: str) -> dict[str, Any]:
    sandbox = await start_sandbox(total_credits=Decimal("100000000"))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = temp_sqlite_url(Path(tmp)) if db == "sqlite" else PG_BENCH_URL
            settings = sandbox.settings(url)
            encryption_key = _plain(settings.encryption_key)
            seeded = await seed(url, n, sandbox.openrouter.keys, encryption_key)
            # The child rebuilds the same settings; secrets travel in plain (loopback only).
            secrets = (
                "encryption_key",
                "bot_token",
                "openrouter_management_key",
                "krypto_express_api_key",
                "krypto_express_callback_secret",
            )
            config = {
                "settings": {
                    **settings.model_dump(mode="json"),
                    **{name: _plain(getattr(settings, name)) for name in secrets},
                }
            }
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.scale",
                "--child",
                json.dumps(config, default=str),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, stderr = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"child failed: {stderr.decode()[-3000:]}")
            figures = json.loads(stdout.decode().strip().splitlines()[-1])
            return {"buyers": n, "db": db, "seed_s": round(seeded, 2), **figures}
    finally:
        await sandbox.stop()


def _plain(value: Any) -> str:
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if getter else value)


async def run(sizes: list[int], dbs: list[str]) -> dict[str, Any]:
    rows = []
    for db in dbs:
        if db == "postgresql" and not pg_available():
            continue
        for n in sizes:
            rows.append(await measure(n, db))
            print(json.dumps(rows[-1]), file=sys.stderr)
    return {"rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None)
    parser.add_argument("--db", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(asyncio.run(child(json.loads(args.child)))))
        return {}
    default_sizes = "1000,10000" if args.quick else "1000,10000,100000"
    sizes = [int(s) for s in (args.sizes or default_sizes).split(",")]
    dbs = (args.db or ("sqlite" if args.quick else "sqlite,postgresql")).split(",")
    result = {"machine": machine(), **asyncio.run(run(sizes, dbs))}
    save("scale", result, quick=args.quick)
    print_json(result)
    return result


if __name__ == "__main__":
    main()
