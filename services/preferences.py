"""The buyer's ⚙️ Settings: which scheduled messages they want (SPEC §6).

The flags live on ``users`` (notify_quota, notify_reminders, daily_summary); the jobs
in processing/alerts.py read them. This service owns the transaction of a change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import not_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db.models import User


class Preference(StrEnum):
    """A toggle on the settings screen; the value is what callback data carries."""

    QUOTA = "quota"
    REMINDERS = "reminders"
    SUMMARY = "summary"


# Which users column each toggle flips. A fixed map: callback data never names a column.
_COLUMNS = {
    Preference.QUOTA: User.notify_quota,
    Preference.REMINDERS: User.notify_reminders,
    Preference.SUMMARY: User.daily_summary,
}


@dataclass(frozen=True)
class Preferences:
    notify_quota: bool
    notify_reminders: bool
    daily_summary: bool

    def enabled(self, preference: Preference) -> bool:
        return {
            Preference.QUOTA: self.notify_quota,
            Preference.REMINDERS: self.notify_reminders,
            Preference.SUMMARY: self.daily_summary,
        }[preference]


class PreferencesService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def get(self, user_id: int) -> Preferences:
        async with self.sessions() as session:
            return await self._read(session, user_id)

    async def toggle(self, user_id: int, preference: Preference) -> Preferences:
        """Flip one flag and return the new state.

        ``SET col = NOT col`` in one statement: two quick presses flip twice, never
        lose one to a read-modify-write race.
        """
        column = _COLUMNS[preference]
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(User)
                .where(User.id == user_id)
                .values({column.key: not_(column)})
                .execution_options(synchronize_session=False)
            )
            return await self._read(session, user_id)

    @staticmethod
    async def _read(session: AsyncSession, user_id: int) -> Preferences:
        row = (
            await session.execute(
                select(User.notify_quota, User.notify_reminders, User.daily_summary).where(
                    User.id == user_id
                )
            )
        ).one_or_none()
        if row is None:
            # The middleware creates the user before any handler runs; the defaults
            # of the schema are what a user without a row would get.
            return Preferences(notify_quota=True, notify_reminders=True, daily_summary=False)
        return Preferences(
            notify_quota=bool(row.notify_quota),
            notify_reminders=bool(row.notify_reminders),
            daily_summary=bool(row.daily_summary),
        )
