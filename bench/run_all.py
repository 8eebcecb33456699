"""Run every benchmark, then regenerate docs/performance.md from the results.

    python bench/run_all.py            # full run (about 15 minutes; the committed figures)
    python bench/run_all.py --quick    # small run, under 3 minutes (also: python -m bench.run_all)
    python -m bench.run_all --render   # only regenerate the page from saved results

Each benchmark runs in its own process so one's memory and tasks cannot skew the next.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as ``python bench/run_all.py`` too
    sys.path.insert(0, str(REPO))

from bench.report import DOC, render  # noqa: E402

BENCHMARKS = ("updates", "memory", "payments", "broadcast", "scale")
HOTSPOTS = Path(__file__).resolve().parent / "hotspots.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--render", action="store_true", help="only regenerate the page")
    parser.add_argument("--only", help="comma-separated subset of " + ",".join(BENCHMARKS))
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args(argv)
    if not args.render:
        chosen = args.only.split(",") if args.only else list(BENCHMARKS)
        for name in chosen:
            started = time.monotonic()
            command = [sys.executable, "-m", f"bench.{name}"] + (["--quick"] if args.quick else [])
            print(f"== {' '.join(command[1:])}", flush=True)
            done = subprocess.run(command, stdout=subprocess.DEVNULL, check=False, cwd=REPO)  # noqa: S603 (ours)
            print(f"   exit {done.returncode} in {time.monotonic() - started:.1f} s", flush=True)
            if done.returncode != 0:
                return done.returncode
    hotspots = HOTSPOTS.read_text() if HOTSPOTS.exists() else ""
    render(quick=args.quick, doc=args.out, hotspots=hotspots)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
