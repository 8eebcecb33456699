"""Chaos run (issue 4 §2): prove that no paid order is lost or delivered twice.

The driver hosts the four emulators in this process and runs the bot as real
subprocesses (``python run.py``, one or two replicas) against them, with both payment
rails (``PAYMENT_PROVIDERS=kryptoexpress,cryptopay``). Many buyers order at once
through the Telegram emulator, a quarter of them in TON (only Crypto Pay takes it);
every provider callback or Crypto Pay webhook is delivered 1–5 times, concurrently and
out of order, while the polling job races them; about 20 % of provider and OpenRouter
calls fail (5xx, dropped connections, slow answers and real client timeouts, and calls
applied whose answer is lost); now and then one provider cannot create invoices for a
few seconds (an outage: KryptoExpress orders fall back to Crypto Pay); a rare
refused management key makes some orders fail, and an operator refunds failed orders
with the admin ``/refund`` command in the admin group while the run goes on; bot
processes are SIGKILLed at random moments and restarted. Then the faults stop, the
operator refunds what is still failed, the driver waits until nothing is in flight, and
checks:

- every fully paid order (KryptoExpress or Crypto Pay) is delivered exactly once (one
  ``delivered`` event; the delivered message reaches the buyer; extra copies are
  counted as at-least-once duplicates, allowed by design and reported), or was refunded
  by the operator (one ``refunded`` event, no ``delivered`` one);
- per buyer, the OpenRouter key limit = Σ base_usd of their delivered orders, to the cent;
- no credit without a paid order (Σ key limits = Σ delivered base; keys of buyers
  without a delivered order have no limit);
- a refunded Crypto Pay order is paid back (``💸 Refund to buyer``) at most once,
  exactly what the buyer paid;
- no order left in new / paid / fulfilling / awaiting_funds;
- every outbox row was sent (or dropped for an unreachable chat).

    python bench/chaos.py [--orders N] [--db sqlite|postgres] [--processes 1|2] [--seed S]

Exit status 0 when every invariant holds. See docs/reliability.md.

This file is the command line; the run lives in ``chaos_run`` (driver, drain,
invariants), ``chaos_operator``, ``chaos_buyers``, ``chaos_setup`` (database,
processes, faults, outages) and ``chaos_report``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as ``python bench/chaos.py``
    sys.path.insert(0, str(REPO))


from bench.chaos_report import ChaosConfig, ChaosReport  # noqa: E402
from bench.chaos_run import run_chaos  # noqa: E402

__all__ = ["ChaosConfig", "ChaosReport", "main", "run_chaos"]


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
