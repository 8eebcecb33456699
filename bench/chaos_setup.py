"""The chaos run's world: its database, the bot processes, the injected faults."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from bench.chaos_report import ChaosConfig, Stats
from db.engine import create_engine, wipe_postgres
from db.migrate import upgrade_to_head
from sandbox.common import LOOPBACK, FaultRule
from sandbox.runner import (
    ADMIN_CHAT_ID,
    ADMIN_ID,
    BOT_TOKEN,
    CRYPTO_PAY_TOKEN,
    KRYPTO_API_KEY,
    MANAGEMENT_KEY,
    Sandbox,
)
from services.openrouter import min_lease_seconds

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/chaos"


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
        await wipe_postgres(url)
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
            "CRYPTO_PAY_API_URL": f"{sandbox.cryptopay_url}/api",
            "CRYPTO_PAY_TOKEN": CRYPTO_PAY_TOKEN,
            # Both rails, KryptoExpress first: TON only Crypto Pay takes, and the other
            # assets fall back to it while KryptoExpress is out (issue 12).
            "PAYMENT_PROVIDERS": "kryptoexpress,cryptopay",
            # Short, so an outage window of a few seconds trips the cool-down and the
            # provider is back in use within the run (production: 3 and 300 s).
            "PROVIDER_FAILURE_THRESHOLD": "2",
            "PROVIDER_COOLDOWN_SECONDS": "4",
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
        # Crypto Pay: invoice creation (never retried: a lost answer leaves an unused
        # invoice) and the polling read (retried).
        (sandbox.cryptopay.faults, "/api/createInvoice"),
        (sandbox.cryptopay.faults, "/api/getInvoices"),
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
    sandbox.cryptopay.faults.clear()


# An outage: every invoice creation of one provider fails for a few seconds, mostly 5xx,
# some slow 504s and dropped connections (the client retries them, then gives up).
OUTAGE_MODES: tuple[tuple[dict[str, Any], float], ...] = (
    ({"mode": "status", "status": 503}, 0.5),
    ({"mode": "status", "status": 502}, 0.2),
    ({"mode": "drop"}, 0.15),
    ({"mode": "timeout", "status": 504, "delay": 1.5}, 0.15),
)


async def outage_windows(
    sandbox: Sandbox, seed: int, stats: Stats, running: Any, log: Any = None
) -> None:
    """While ``running()``: now and then one provider cannot create invoices for 3–8 s.

    KryptoExpress (three windows in four) fails ``POST /api/payment``, so orders fall
    back to Crypto Pay and, after PROVIDER_FAILURE_THRESHOLD failures, KryptoExpress
    cools down; Crypto Pay fails ``createInvoice`` (TON orders then fail and buyers try
    again; the others stay on KryptoExpress)."""
    rng = random.Random(seed * 13 + 5)
    while running():
        await asyncio.sleep(rng.uniform(1.0, 5.0))
        if not running():
            return
        kryptoexpress = rng.random() < 0.75
        faults, path, method = (
            (sandbox.kryptoexpress.faults, "/api/payment", "POST")
            if kryptoexpress
            else (sandbox.cryptopay.faults, "/api/createInvoice", "*")
        )
        spec = rng.choices([m for m, _ in OUTAGE_MODES], [w for _, w in OUTAGE_MODES])[0]
        # First, so it wins over the random faults for the same path.
        rule = FaultRule(**{"path": path, "method": method, "count": None, **spec})
        faults.rules.insert(0, rule)
        name = "kryptoexpress" if kryptoexpress else "cryptopay"
        stats.outages += 1
        stats.outages_by_provider[name] = stats.outages_by_provider.get(name, 0) + 1
        seconds = rng.uniform(3.0, 8.0)
        if log is not None:
            log(f"outage: {name} invoice creation {spec['mode']} for {seconds:.1f}s")
        await asyncio.sleep(seconds)
        with contextlib.suppress(ValueError):  # cleared with the rest meanwhile
            faults.rules.remove(rule)
