"""Idle memory: the bot's resident set vs a bare aiogram echo bot's, same run.

Each bot runs alone in a fresh process (``--child ours|bare``, importing only what that
bot imports) against emulators in another (bench/load_side.py with no buyers), answers
one ``/start`` so its per-update code is loaded, idles, and reports ``VmRSS`` from
/proc. Three rounds; min / median / max.

    python -m bench.memory [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

IDLE_SECONDS = 2.0
WHO = 7_100_000


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def _until_told(reader: asyncio.StreamReader) -> dict[str, Any]:
    """Idle until the parent has had its one update answered, then measure."""
    await reader.readline()
    await asyncio.sleep(IDLE_SECONDS)
    loaded = {m.split(".")[0] for m in sys.modules}
    return {
        "rss_mib": _status_mib("VmRSS"),
        "peak_mib": _status_mib("VmHWM"),
        "alembic_loaded": "alembic" in loaded,
        "redis_loaded": "redis" in loaded,
        "modules": len(sys.modules),
    }


def _ready() -> None:
    print(json.dumps({"ready": True}), flush=True)


async def child(bot: str) -> dict[str, Any]:
    """Runs in the measured process: start the bot, say ready, idle, read /proc."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    values = json.loads(await reader.readline())
    if bot == "bare":
        from bench.echo_bot import bare_bot

        async with bare_bot(values["telegram_api_base"], values["bot_token"]):
            _ready()
            return await _until_told(reader)
    from bot.app import BotApp
    from bot.settings import load_settings
    from processing.scheduler import JobIntervals

    idle = 3600.0
    app = BotApp(
        load_settings(**values),
        intervals=JobIntervals(
            payment_poll=idle, expiry=idle, fulfilment=idle, prices=idle, funds_recheck=idle
        ),
    )
    await app.start()
    try:
        _ready()
        return await _until_told(reader)
    finally:
        await app.stop()


async def measure(bot: str) -> dict[str, Any]:
    from bench.updates import REPO, load_side
    from db.engine import create_engine
    from db.migrate import upgrade_to_head
    from sandbox.runner import sandbox_setting_values, temp_sqlite_url

    with tempfile.TemporaryDirectory() as tmp:
        # A restart, the usual start: the database is at head already (migrated here),
        # so the bot's process has no reason to import Alembic.
        url = temp_sqlite_url(Path(tmp))
        engine = create_engine(url)
        await upgrade_to_head(engine)
        await engine.dispose()
        async with load_side("echo", 0) as side:
            values = sandbox_setting_values(side.urls, side.callback_secret, url)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.memory",
                "--child",
                bot,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=REPO,
            )
            try:
                return await _measure_child(proc, values)
            finally:
                if proc.returncode is None:
                    if proc.stdin is not None:
                        proc.stdin.close()
                    await proc.wait()


async def _measure_child(
    proc: asyncio.subprocess.Process, values: dict[str, Any]
) -> dict[str, Any]:
    from bench.updates import _json_line
    from sandbox.telegram_control import TelegramControl

    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(values).encode() + b"\n")
    await proc.stdin.drain()
    await _json_line(proc.stdout, 120.0)  # ready
    async with TelegramControl(values["telegram_api_base"]) as tg:
        await tg.send_text(WHO, "/start")
        await tg.wait_for(WHO, lambda m: bool(m["from_bot"]), timeout=60)
    proc.stdin.write(b"measure\n")
    await proc.stdin.drain()
    return await _json_line(proc.stdout, 60.0)


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"min": ordered[0], "median": statistics.median(ordered), "max": ordered[-1]}


async def run(rounds: int) -> dict[str, Any]:
    done = []
    for _ in range(rounds):
        bare = await measure("bare")
        ours = await measure("ours")
        above = round(ours["rss_mib"] - bare["rss_mib"], 1)
        done.append({"ours": ours, "bare": bare, "above_bare_mib": above})
    return {
        "rounds": done,
        "ours_rss_mib": _spread([r["ours"]["rss_mib"] for r in done]),
        "bare_rss_mib": _spread([r["bare"]["rss_mib"] for r in done]),
        "above_bare_mib": _spread([r["above_bare_mib"] for r in done]),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", choices=("ours", "bare"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = asyncio.run(child(args.child))
        print(json.dumps(result), flush=True)
        return result
    from bench.common import machine, print_json, save

    rounds = args.rounds or (1 if args.quick else 3)
    result = {"machine": machine(), **asyncio.run(run(rounds))}
    save("memory", result, quick=args.quick)
    print_json(result)
    return result


if __name__ == "__main__":
    main()
