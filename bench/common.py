"""Shared benchmark plumbing: the machine, percentiles, result files, a tracing hook.

Every benchmark measures the bot and its ceiling in the same process run, on the same
machine, one after the other, so the ratio is meaningful even when the absolute
figures move with the machine's load. Benchmarks report figures; they never assert
a speed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sandbox.telegram import TelegramEmulator

RESULTS = Path(__file__).resolve().parent / "results"
# Parallel work sessions each point this at their own database (BENCH_DATABASE_URL).
PG_BENCH_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/bench"
)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(seconds, 50) * 1000, 2),
        "p99_ms": round(percentile(seconds, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(seconds) * 1000, 2) if seconds else 0.0,
        "n": len(seconds),
    }


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gib": mem_gib,
        "python": platform.python_version(),
        "load_1min_at_start": round(load, 2),
    }


def pg_available(url: str = PG_BENCH_URL) -> bool:
    """The bench database answers (created with ``createdb -h 127.0.0.1 -U postgres bench``)."""
    import asyncio

    import asyncpg

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"), timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.close()
        return True

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(probe())
    # Called from a running loop: probe in a helper thread with its own loop.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, probe()).result()


def save(name: str, data: dict[str, Any], *, quick: bool) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'.quick' if quick else ''}.json"
    data = {"benchmark": name, "quick": quick, "when": time.strftime("%Y-%m-%d %H:%M:%S"), **data}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def load(name: str, *, quick: bool) -> dict[str, Any] | None:
    path = RESULTS / f"{name}{'.quick' if quick else ''}.json"
    if not path.exists():
        return None
    result: dict[str, Any] = json.loads(path.read_text())
    return result


class UpdateClock:
    """Records, inside the Telegram emulator, when each update is injected and when
    each Bot API call touching a chat happened (event seq -> wall time).

    Wraps two emulator methods on the instance only; the emulator's behaviour is
    unchanged.
    """

    def __init__(self, emulator: TelegramEmulator) -> None:
        self.emulator = emulator
        self.injected: dict[int, float] = {}
        enqueue = emulator._enqueue

        def timed_enqueue(kind: str, payload: dict[str, Any]) -> tuple[int, bool]:
            update_id, queued = enqueue(kind, payload)
            self.injected[update_id] = time.time()
            return update_id, queued

        emulator._enqueue = timed_enqueue  # type: ignore[method-assign]

    def seq(self) -> int:
        return int(self.emulator._seq)

    def event_at(self, seq: int) -> float | None:
        # Events are appended in seq order; search from the end (recent ones).
        for event in reversed(self.emulator.events):
            if event.seq == seq:
                return event.at
            if event.seq < seq:
                break
        return None


def run_main(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def print_json(data: dict[str, Any]) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


class database_env:
    """Point the harness at a database for one run: None = a temp SQLite file, else the
    PostgreSQL URL (the harness wipes schema public of *that* database, so use the
    dedicated ``bench`` database, never ``test``)."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.saved: str | None = None

    def __enter__(self) -> None:
        self.saved = os.environ.pop("TEST_DATABASE_URL", None)
        if self.url:
            os.environ["TEST_DATABASE_URL"] = self.url

    def __exit__(self, *exc: object) -> None:
        os.environ.pop("TEST_DATABASE_URL", None)
        if self.saved is not None:
            os.environ["TEST_DATABASE_URL"] = self.saved
