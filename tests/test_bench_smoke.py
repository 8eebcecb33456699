"""Each benchmark, run tiny, still works (figures are printed, never asserted as speed).

The benchmarks need requirements-bench.txt (matplotlib for the growth plot); without it
this module is skipped with that reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="benchmarks need requirements-bench.txt (matplotlib)")

from bench import broadcast, memory, payments, report, scale, updates
from bench.common import percentile


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 50) == 0.0


async def test_updates_benchmark_runs() -> None:
    result = await updates.run(4)
    for side in ("ours", "bare", "bare_limited"):
        assert result[side]["failures"] == 0, result[side]["failure_sample"]
        assert result[side]["updates"] == 22  # 2 buyers × 5 + 2 × 6 updates
    assert result["throughput_ratio"] is not None
    assert result["throughput_ratio_limited"] is not None
    summary = updates.summarise([result])
    assert "bare_limited_updates_per_s" in summary and "cpu_ratio_limited" in summary


async def test_memory_benchmark_runs() -> None:
    result = await memory.run(1)
    ours, bare = result["rounds"][0]["ours"], result["rounds"][0]["bare"]
    assert ours["rss_mib"] > 0 and bare["rss_mib"] > 0
    assert ours["alembic_loaded"] is False and ours["redis_loaded"] is False


async def test_payments_benchmark_runs() -> None:
    result = await payments.run(3, postgres=False)
    figures = result["sqlite"]
    assert figures["delivered"] == 3 and figures["callbacks_rejected"] == 0
    assert figures["key_messages_missing"] == 0
    assert figures["ceiling"]["rejected"] == 0


async def test_broadcast_benchmark_runs() -> None:
    sent = await broadcast.broadcast(20)
    assert sent["lost"] == 0 and sent["duplicated"] == 0 and sent["sent_rows"] == 21
    alerts = await broadcast.alert_burst(alerts=22, window=1.0)
    assert alerts["lost"] == 0 and alerts["max_in_window"] <= 20


async def test_scale_benchmark_runs() -> None:
    row = await scale.measure(200, "sqlite")
    assert row["sweep_keys"] == 200 and row["first_delivery_ok"]
    assert row["report_paid"] == 200 and row["peak_rss_mib"] > 0
    assert row["idle_rss_mib"] > 0 and row["sweep_peak_rss_mib"] >= row["idle_rss_mib"] - 1


def test_report_renders(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    text = report.render(quick=True, doc=doc, hotspots="## Hot spots\n")
    assert text.startswith("# Performance") and doc.exists()
