"""Time: timezone-aware UTC only."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_utc(moment: datetime | None) -> str:
    """How deadlines are written to buyers: minutes, UTC named."""
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "—"
