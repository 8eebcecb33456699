"""Render docs/performance.md (and its plot) from bench/results/*.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import load

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
PLOT_NAME = "performance-scale.png"

SCALE_SERIES = (
    ("peak_rss_mib", "peak RSS of the bot (MiB)"),
    ("startup_s", "start-up (s)"),
    ("sweep_s", "low-quota sweep (s)"),
    ("sweep_calls", "sweep: OpenRouter calls"),
    ("report_query_s", "daily report query (s)"),
    ("first_delivery_s", "first delivery among N keys (s)"),
)


def plot_scale(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (field, title) in zip(axes.flat, SCALE_SERIES, strict=True):
        for db in sorted({r["db"] for r in rows}):
            points = sorted((r["buyers"], r[field]) for r in rows if r["db"] == db and field in r)
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=db)
        ax.set_xscale("log")
        ax.set_yscale("log")  # log-log: linear growth is a slope of 1
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("buyers in the database")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _ms(figures: dict[str, Any]) -> str:
    return f"{figures['p50_ms']:.0f} / {figures['p99_ms']:.0f} ms"


def _spread(s: dict[str, float]) -> str:
    return f"{s['min']:g} / {s['median']:g} / {s['max']:g}"


UPDATE_ROWS = (
    ("throughput_ratio", "ours / bare updates/s (the target: ≥ 0.5)"),
    ("throughput_ratio_limited", "ours / bare held to 30 msg/s updates/s (the fair ceiling)"),
    ("cpu_ratio", "bare / ours bot CPU per update"),
    ("cpu_ratio_limited", "bare held to 30 msg/s / ours bot CPU per update"),
    ("ours_updates_per_s", "ours: updates/s"),
    ("bare_updates_per_s", "bare: updates/s"),
    ("bare_limited_updates_per_s", "bare held to 30 msg/s: updates/s"),
    ("ours_bot_cpu_ms_per_update", "ours: bot CPU ms / update"),
    ("bare_bot_cpu_ms_per_update", "bare: bot CPU ms / update"),
    ("bare_limited_bot_cpu_ms_per_update", "bare held to 30 msg/s: bot CPU ms / update"),
    ("ours_load_side_cpu_ms_per_update", "ours: load side CPU ms / update"),
    ("bare_load_side_cpu_ms_per_update", "bare: load side CPU ms / update"),
    (
        "bare_limited_load_side_cpu_ms_per_update",
        "bare held to 30 msg/s: load side CPU ms / update",
    ),
    ("ours_p99_ms", "ours: p99 latency ms"),
    ("bare_p99_ms", "bare: p99 latency ms"),
    ("bare_limited_p99_ms", "bare held to 30 msg/s: p99 latency ms"),
    ("load_1min", "1-minute load average (run starts and ends)"),
)


def _update_spreads(runs: list[dict[str, Any]]) -> str:
    """min / median / max of each figure over the rounds, one column per buyer count."""
    lines = [
        f"Spread over {len(runs[0]['rounds'])} rounds (bare, bare held to 30 msg/s when "
        "measured, then ours, each in the same process run): min / median / max.\n",
        "| figure | " + " | ".join(f"{r['buyers']} buyers" for r in runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    for key, label in UPDATE_ROWS:
        if not any(key in r["summary"] for r in runs):
            continue  # e.g. the limited ceiling in results saved before it existed
        cells = [_spread(r["summary"][key]) if key in r["summary"] else "-" for r in runs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    failures = sum(r["summary"]["failures"] for r in runs)
    lines.append(f"\nFailed buyers over all rounds: {failures}.\n")
    return "\n".join(lines)


BEFORE_AFTER_ROWS = (
    ("ours_bot_cpu_ms_per_update", "ours: bot CPU ms / update"),
    ("bare_bot_cpu_ms_per_update", "bare: bot CPU ms / update"),
    ("cpu_ratio", "bare / ours bot CPU per update"),
    ("throughput_ratio", "ours / bare updates/s"),
    ("throughput_ratio_limited", "ours / bare held to 30 msg/s updates/s"),
    ("load_1min", "1-minute load average"),
)


def _before_after(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The last change's effect, from bench/results/updates.before.json (the same
    benchmark run on the commit before it) and the current results."""
    lines = [
        f"Before / after ({before.get('change', 'the last change')}): medians of "
        "three rounds each, min–max in brackets. CPU per update is the figure to trust "
        "on a loaded machine; updates/s moves with the load.\n",
        "| figure | buyers | before | after |",
        "|---|---:|---:|---:|",
    ]
    for key, label in BEFORE_AFTER_ROWS:
        for b, a in zip(before["runs"], after["runs"], strict=False):
            sb, sa = b["summary"].get(key), a["summary"].get(key)
            if sb and sa:
                lines.append(
                    f"| {label} | {a['buyers']} | {sb['median']:g} ({sb['min']:g}–{sb['max']:g}) "
                    f"| {sa['median']:g} ({sa['min']:g}–{sa['max']:g}) |"
                )
    return "\n".join(lines) + "\n"


def _scale_targets(rows: list[dict[str, Any]], add: Any) -> None:
    """Issue 14 items 4 and 6 beside their figures, at the largest size measured."""
    largest = max((r["buyers"] for r in rows), default=0)
    at = [r for r in rows if r["buyers"] == largest]
    if not at:
        return
    add(f"\nAgainst issue 14's targets at {largest:,} keys:\n")
    add("| target | " + " | ".join(r["db"] for r in at) + " | target |")
    add("|---|" + "---:|" * len(at) + "---:|")
    add(
        "| OpenRouter calls for a first delivery (`POST /keys`, `GET /credits` — the "
        "funds check —, `PATCH`) | "
        + " | ".join(str(r["first_delivery_calls"]) for r in at)
        + " | O(1): the same at every size |"
    )
    above = [
        f"{r['sweep_peak_rss_mib'] - r['idle_rss_mib']:.1f}"
        if "sweep_peak_rss_mib" in r and "idle_rss_mib" in r
        else "–"
        for r in at
    ]
    add("| quota sweep: peak RSS above idle, MiB | " + " | ".join(above) + " | ≤ 64 |")
    add(
        "| the full key listing (background, every FUNDS_REMEASURE_SECONDS, not per "
        "delivery): calls | "
        + " | ".join(str(r.get("funds_listing_calls", "–")) for r in at)
        + " | rare |"
    )


def render(*, quick: bool, doc: Path = DOC, hotspots: str = "") -> str:
    updates = load("updates", quick=quick)
    memory = load("memory", quick=quick)
    payments = load("payments", quick=quick)
    broadcast = load("broadcast", quick=quick)
    scale = load("scale", quick=quick)
    first = next((r for r in (updates, payments, broadcast, scale) if r), None)
    m = (first or {}).get("machine", {})
    out: list[str] = []
    add = out.append
    add("# Performance\n")
    add(
        "<!-- Generated by `python -m bench.run_all"
        + (" --quick" if quick else "")
        + "` from bench/results/; edit bench/report.py, not this file. -->\n"
    )
    add(
        f"Figures from the **{'quick' if quick else 'full'}** run. Every figure sits next to "
        "its ceiling measured in the same run on the same machine; the ratio is the "
        "figure to read, the absolute numbers move with the machine and its load.\n"
    )
    add("## Machine\n")
    add(
        f"{m.get('nproc')} CPUs ({m.get('cpu')}), {m.get('ram_gib')} GiB RAM, "
        f"Python {m.get('python')}, 1-minute load average at the start of the first "
        f"benchmark: {m.get('load_1min_at_start')}.\n"
    )
    add("## Method\n")
    add(
        "- Everything runs on loopback: the Telegram, OpenRouter and KryptoExpress "
        "emulators (sandbox/), the real app (dispatcher, middlewares, database, HTTP "
        "server, outbox sender) and the load driver. In benchmark 1 the emulators and "
        "the buyers run in a child process (bench/load_side.py) and wake a buyer only "
        "when its own chat changes, so the bot's process spends its CPU on the bot "
        "alone; its CPU time per update is reported for both bots, with the load "
        "average at the start and end of each run. In benchmarks 2–3 they share one "
        "process and event loop, like tests/harness.py, so the driver and emulators take "
        "CPU from the bot; the bare ceilings pay the same tax, which is why the ratio "
        "is the headline. Benchmark 4 runs the bot in its own process.\n"
        "- Latency is taken from the Telegram emulator's own clock: the time it queued "
        "the update vs the time of the bot's answering Bot API call (`Event.at`).\n"
        "- Each benchmark is one command (`python -m bench.updates`, `bench.memory`, "
        "`bench.payments`, `bench.broadcast`, `bench.scale`; `--quick` for a small run); "
        "`python -m bench.run_all [--quick]` runs them all and regenerates this page. "
        "PostgreSQL runs use their own database `bench` "
        "(`createdb -h 127.0.0.1 -U postgres bench`), never `test`, whose schema the "
        "test suite wipes.\n"
        "- Benchmarks report; they never fail on speed. tests/test_bench_smoke.py runs "
        "each one tiny so CI proves they still work.\n"
    )
    if updates:
        o, b = updates["ours"], updates["bare"]
        add("## 1. Update handling (buy flow vs bare aiogram echo bot)\n")
        add(
            f"{updates['buyers']} buyers at once, each walking `/start` → 🤖 AI Tokens → a "
            "package (even ids) or ✏️ Custom amount + typed amount (odd ids) → USDT quote → "
            "✅ Confirm (invoice created at the KryptoExpress emulator, QR photo sent). "
            "The ceiling replays the same number and kinds of updates against a "
            "Dispatcher with one message handler (answer) and one callback handler "
            "(answer + edit). All buyers start at once, so the latencies are those of a "
            "saturated bot (queueing included); updates/s is its capacity on this machine. "
            "Run with `--buyers 1` for unloaded latency.\n"
        )
        add(
            "| | updates | updates/s | p50 / p99 latency | Bot API calls / update | "
            "bot CPU ms / update | load side CPU ms / update | failures |"
        )
        add("|---|---:|---:|---:|---:|---:|---:|---:|")
        sides = [("ours", o), ("bare echo bot", b)]
        if updates.get("bare_limited"):
            sides.append(("bare echo bot held to 30 msg/s", updates["bare_limited"]))
        for label, f in sides:
            add(
                f"| {label} | {f['updates']} | {f['updates_per_s']} | {_ms(f)} | "
                f"{f.get('bot_api_calls_per_update', '-')} | "
                f"{f.get('bot_cpu_ms_per_update', '-')} | "
                f"{f.get('load_side_cpu_ms_per_update', '-')} | {f['failures']} |"
            )
        if updates.get("cpu_ratio"):
            add(
                f"\n**Headline: bare/ours bot CPU per update = {updates['cpu_ratio']}** "
                "(the bot's own CPU, the figure that holds on a shared machine); "
                f"ours/bare updates/s = {updates['throughput_ratio']}, latency "
                f"×{updates['p50_ratio']} at p50, ×{updates['p99_ratio']} at p99 (these "
                "move with the machine's load and the load side's own CPU).\n"
            )
        else:
            add(
                f"\n**Headline: ours/bare throughput = {updates['throughput_ratio']}**; "
                f"latency ×{updates['p50_ratio']} at p50, ×{updates['p99_ratio']} at p99.\n"
            )
        if updates.get("throughput_ratio_limited"):
            add(
                "The bare echo bot sends without any limit (the emulator's flood control is "
                "off here), while ours waits for a place in Telegram's overall 30 "
                "messages/s; the fair ceiling is the same echo bot held to that limit "
                "(bench/send_limit.py, counting the sends ours counts): **ours / bare held "
                f"to 30 msg/s updates/s = {updates['throughput_ratio_limited']}** (latency "
                f"×{updates.get('p50_ratio_limited')} at p50, "
                f"×{updates.get('p99_ratio_limited')} at p99).\n"
            )
        if updates.get("runs"):
            add(_update_spreads(updates["runs"]))
        before = load("updates.before", quick=quick)
        if before and before.get("runs") and updates.get("runs"):
            add(_before_after(before, updates))
    if memory:
        add("## 1b. Idle memory (bot vs bare aiogram echo bot)\n")
        add(
            "Each bot alone in a fresh process (the emulators in another), started on a "
            "database already at head (a restart, the usual start), one `/start` answered, "
            "then idle; `VmRSS` from /proc. "
            f"{len(memory['rounds'])} rounds, min / median / max.\n"
        )
        add("| figure | min / median / max | target |")
        add("|---|---:|---:|")
        add(f"| ours: idle RSS MiB | {_spread(memory['ours_rss_mib'])} | |")
        add(f"| bare aiogram echo bot: idle RSS MiB | {_spread(memory['bare_rss_mib'])} | |")
        add(f"| ours above bare, MiB | {_spread(memory['above_bare_mib'])} | ≤ 40 |")
        before_memory = load("memory.before", quick=quick)
        if before_memory:
            add(
                f"| before ({before_memory.get('change', 'the last change')}): ours above "
                f"bare, MiB | {_spread(before_memory['above_bare_mib'])} | ≤ 40 |"
            )
        first = memory["rounds"][0]["ours"]
        add(
            f"\nAlembic imported by the idle bot: {first.get('alembic_loaded')}; redis "
            f"(REDIS_URL unset): {first.get('redis_loaded')}.\n"
        )
    if payments:
        add("## 2. Payment confirmations (signed callbacks in parallel)\n")
        add(
            f"{payments['orders']} orders placed through the buy flow, then all their signed "
            "callbacks POSTed at once to the bot's callback URL. *Confirmations/s* counts "
            "until every order is `delivered` (key created, limit set, key message "
            "queued in the same transaction). *Callback → key sent* ends at the Telegram "
            "emulator's record of the delivery message; the outbox paces sends at ≤ 30/s, "
            "so for many buyers at once this includes the queue for Telegram's limit; "
            "*callback → key queued* ends when the key message's outbox row is written "
            "(the bot's own latency, issue 14's target). *Tx/order* counts every "
            "transaction the bot's sessions began during the run (outbox sender included) "
            "per order. The emulators, the buyers and the callback POSTs run in a child "
            "process (`bench/payments_side.py`): *bot CPU ms/order* is the bot process's "
            "CPU (every thread) from the first callback to the last delivery, *load side "
            "CPU ms/order* the child's until every key message was sent, with the "
            "1-minute load average at the end. The "
            "ceiling is an aiohttp handler that only verifies the signature "
            "(`services.payments.kryptoexpress.verify_signature`) on the same bodies sent "
            "the same way.\n"
        )
        add(
            "| database | confirmations/s | callback HTTP p50 / p99 | callback → key queued "
            "p50 / p99 | callback → key sent p50 / p99 | tx/order | bot CPU ms/order (load) "
            "| load side CPU ms/order | ceiling verifications/s | ratio |"
        )
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in ("sqlite", "postgresql"):
            f = payments.get(name)
            if not f:
                add(f"| {name} | not run (database unavailable) | | | | | | | |")
                continue
            queued = f.get("callback_to_key_queued")
            cpu = f.get("bot_cpu_ms_per_order")
            load_avg = f.get("load_1min", {}).get("end")
            cpu_cell = "—" if cpu is None or load_avg is None else f"{cpu} ({load_avg:.1f})"
            add(
                f"| {name} | {f['confirmations_per_s']} | {_ms(f['callback_http'])} | "
                f"{_ms(queued) if queued else '—'} | {_ms(f['callback_to_key_sent'])} | "
                f"{f.get('transactions_per_order', '—')} | {cpu_cell} | "
                f"{f.get('load_side_cpu_ms_per_order', '—')} | "
                f"{f['ceiling']['verified_per_s']} | "
                f"{f['ratio_to_ceiling']} |"
            )
        add("")
        _payment_rounds(add, payments.get("runs") or [])
    if broadcast:
        bc, al = broadcast["broadcast"], broadcast["alerts"]
        add("## 3. Broadcast and alerts vs Telegram's limits\n")
        add(
            "The emulator enforces Telegram's limits (30 sends/s overall, a burst of 3 then "
            "1/s per chat, 20 per minute per group) and answers 429 beyond them. "
            f"Finished at {broadcast.get('when')}; 1-minute load average "
            f"{broadcast.get('machine', {}).get('load_1min_at_start')} at its start.\n"
        )
        add("| figure | value | ceiling |")
        add("|---|---:|---:|")
        add(f"| recipients | {bc['recipients']} | |")
        add(
            f"| send rate while sending | {bc['send_rate_per_s']} msg/s "
            f"(**{bc['fraction_of_30']:.1%}** of 30) | 30 msg/s |"
        )
        spread = broadcast.get("spread", {}).get("fraction_of_30")
        if spread:
            add(
                f"| fraction of 30, min / median / max of {broadcast['runs']} runs | "
                f"{spread['min']:.1%} / {spread['median']:.1%} / {spread['max']:.1%} | "
                "≥ 95 % (issue 14) |"
            )
        add(f"| press → last sent | {bc['seconds']} s | {bc['recipients'] / 30:.0f} s at 30/s |")
        add(f"| lost / duplicated | {bc['lost']} / {bc['duplicated']} | 0 / 0 |")
        add(f"| seconds with > 30 sends | {bc['seconds_over_30']} | 0 |")
        add(f"| busiest sliding second | {bc['busiest_sliding_second']} | 30 |")
        add(f"| 429 answers | {bc['rejected_429']} | 0 |")
        add(
            f"| admin alert burst: {al['alerts']} alerts, group window {al['group_window_s']} s "
            f"| {al['seconds']} s in {al.get('messages', al['alerts'])} messages, "
            f"max {al['max_in_window']} per window, lost "
            f"{al['lost']}, duplicated {al['duplicated']} | {al['ideal_seconds']} s, "
            f"{al['limit_in_window']} messages per window (the seconds: one alert per "
            "message) |"
        )
        add("")
    if scale:
        rows = scale["rows"]
        add("## 4. Scale curve\n")
        add(
            "Buyers seeded in bulk (one delivered order and one OpenRouter key each; "
            "every 10th key at 85 % used, so a sweep queues alerts for a tenth); the bot "
            "then runs in its own process. *Sweep* = one `run_quota_sweep` (paged "
            "`GET /keys`, 100 a page); *report* = `AdminLedger.stats` for yesterday "
            "(the daily report's query); *first delivery* = `fulfil_user` for a new "
            "buyer among the N keys. Start-up does no per-buyer work, so it stays flat (its "
            "wiggles are noise); a single report-query figure can include a cold first "
            "query. Single runs vary by about ±30 % on this shared 2-core machine. *Peak "
            "RSS* is the bot's over its whole run; *idle RSS* is before the sweep and "
            "*sweep peak RSS* the peak during the sweep alone (target: ≤ 64 MiB above "
            "idle at 100,000 keys).\n"
        )
        add(
            "| db | buyers | seed s | peak RSS MiB | idle RSS MiB | sweep peak RSS MiB | "
            "start-up s | sweep s | sweep calls | report query s | first delivery s | "
            "first delivery calls | funds listing s / calls |"
        )
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            add(
                f"| {r['db']} | {r['buyers']:,} | {r['seed_s']} | {r['peak_rss_mib']} | "
                f"{r.get('idle_rss_mib', '–')} | {r.get('sweep_peak_rss_mib', '–')} | "
                f"{r['startup_s']} | {r['sweep_s']} | {r['sweep_calls']} | "
                f"{r['report_query_s']} | {r['first_delivery_s']} | "
                f"{r['first_delivery_calls']} | {r.get('funds_listing_s', '–')} / "
                f"{r.get('funds_listing_calls', '–')} |"
            )
        _scale_targets(rows, add)
        plot = doc.parent / PLOT_NAME
        if plot_scale(rows, plot):
            add(f"\n![growth with the number of buyers]({PLOT_NAME})\n")
        else:
            add("\n(plot skipped: matplotlib is not installed)\n")
    if hotspots:
        add(hotspots)
    text = "\n".join(out).rstrip() + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return text


PAYMENT_FIGURES = (
    ("confirmations_per_s", "confirmations/s"),
    ("callback_to_key_queued.p99_ms", "callback → key queued p99 (ms)"),
    ("callback_to_key_sent.p99_ms", "callback → key sent p99 (ms)"),
    ("transactions_per_order", "tx/order"),
    ("bot_cpu_ms_per_order", "bot CPU ms/order"),
    ("load_side_cpu_ms_per_order", "load side CPU ms/order"),
    ("callbacks_rejected", "callbacks not answered 2xx"),
    ("ceiling.verified_per_s", "ceiling verifications/s"),
)


def _payment_rounds(add: Any, runs: list[dict[str, Any]]) -> None:
    """min / median / max over the rounds of each order count (bench.payments' plan)."""
    if not runs:
        return
    add(
        "Every round (min / median / max; target ≥ 150 confirmations/s at 100 and 1,000 "
        "at once, p99 callback → key queued ≤ 1 s at 100):\n"
    )
    add(
        "| orders at once | database | rounds | "
        + " | ".join(t for _, t in PAYMENT_FIGURES)
        + " | load |"
    )
    add("|---:|---|---:|" + "---:|" * len(PAYMENT_FIGURES) + "---|")
    for run in runs:
        for name, figures in run.get("summary", {}).items():
            cells = [
                " / ".join(f"{figures[key][k]:g}" for k in ("min", "median", "max"))
                for key, _ in PAYMENT_FIGURES
            ]
            load = figures["load_1min"]
            add(
                f"| {run['orders']} | {name} | {figures['rounds']} | "
                + " | ".join(cells)
                + f" | {load['min']}–{load['max']} |"
            )
    add("")
