"""The chaos run's settings, counters and report (bench/chaos.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    cryptopay_invoices_seen: int = 0
    buyer_retries: int = 0
    buyers_gave_up: int = 0
    kills: int = 0
    restarts: int = 0
    callbacks_requested: int = 0
    stale_resends: int = 0
    partial_payments: int = 0
    cancelled_then_paid: int = 0
    faults_injected: int = 0
    cryptopay_faults: int = 0
    outages: int = 0
    outages_by_provider: dict[str, int] = field(default_factory=dict)
    forged_webhooks: int = 0
    polling_only: int = 0
    payer_refunds_pressed: int = 0
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
            (
                "invoices shown to buyers (of which Crypto Pay)",
                f"{s.invoices_seen} ({s.cryptopay_invoices_seen})",
            ),
            ("orders per provider (DB; none = no invoice)", f.get("orders_by_provider", {})),
            ("fallbacks (invoice from a later provider)", f.get("fallbacks", 0)),
            ("fully paid (provider)", f"{f.get('paid', 0)} {f.get('paid_by_provider', {})}"),
            (
                "delivered",
                f"{f.get('delivered', 0)} {f.get('delivered_by_provider', {})}",
            ),
            (
                "/refund asked / done / refused / unanswered",
                f"{s.refunds_asked} / {s.refunds_done} / {s.refunds_refused} / "
                f"{s.refunds_unanswered}",
            ),
            (
                "💸 refund to buyer pressed / transfers",
                f"{s.payer_refunds_pressed} / {f.get('payer_refunds', 0)}",
            ),
            ("status counts", f.get("statuses", {})),
            ("partial / cancelled-then-paid", f"{s.partial_payments} / {s.cancelled_then_paid}"),
            ("kills (SIGKILL) / restarts", f"{s.kills} / {s.restarts}"),
            (
                "faults injected (KX+OR+CP) / of which CP",
                f"{s.faults_injected} / {s.cryptopay_faults}",
            ),
            ("invoice outages (windows by provider)", f"{s.outages} {s.outages_by_provider}"),
            (
                "CP forged webhooks / paid without webhook",
                f"{s.forged_webhooks} / {s.polling_only}",
            ),
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
        lines += [f"  duplicate: {d}" for d in f.get("duplicate_samples", [])]
        lines += [f"  ✗ {v}" for v in self.violations[:50]]
        return "\n".join(["chaos run", *lines])
