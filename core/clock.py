"""Time: timezone-aware UTC only."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo


def utcnow() -> datetime:
    return datetime.now(UTC)


class Moment(str):
    """A moment written in English (``2026-03-05 14:07 UTC``) that keeps its value, so a
    template of another language rewrites it in that language (locales.Translator).
    With ``zone`` it is written in that zone and names it (``2026-03-05 17:07 MSK``)."""

    moment: datetime | None
    zone: tzinfo | None

    def __new__(cls, moment: datetime | None, zone: tzinfo | None = None) -> Moment:
        if moment is None:
            english = "—"
        elif zone is None:
            english = moment.strftime("%Y-%m-%d %H:%M UTC")
        else:
            english = moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
        text = super().__new__(cls, english)
        text.moment = moment
        text.zone = zone
        return text

    @property
    def zone_name(self) -> str:
        if self.moment is None or self.zone is None:
            return "UTC"
        return self.moment.astimezone(self.zone).strftime("%Z")


def format_utc(moment: datetime | None) -> Moment:
    """How deadlines are written to buyers: minutes, UTC named."""
    return Moment(moment)
