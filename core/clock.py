"""Time: timezone-aware UTC only."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


class Moment(str):
    """A moment written in English (``2026-03-05 14:07 UTC``) that keeps its value, so a
    template of another language rewrites it in that language (locales.Translator)."""

    moment: datetime | None

    def __new__(cls, moment: datetime | None) -> Moment:
        text = super().__new__(cls, moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "—")
        text.moment = moment
        return text


def format_utc(moment: datetime | None) -> Moment:
    """How deadlines are written to buyers: minutes, UTC named."""
    return Moment(moment)
