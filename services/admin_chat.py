"""Where the admin group is: ADMIN_CHAT_ID, or the supergroup Telegram moved it to.

When a basic group is upgraded to a supergroup (by its owner, or by Telegram itself when
the group turns on a feature only supergroups have), it gets a new chat id and the old one
answers every call with 400 and ``migrate_to_chat_id``. The new id is stored
(``runtime_settings``) and wins over ADMIN_CHAT_ID from then on: for alerts, reports and
which chat admin commands are accepted in. Every reader asks this one object.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from db.models import RuntimeSetting

log = logging.getLogger(__name__)


def _key(old_chat_id: int) -> str:
    return f"admin_chat_moved_from:{old_chat_id}"


class AdminChat:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], configured: int | None) -> None:
        self.sessions = sessions
        self.configured = configured
        self._id = configured

    @property
    def id(self) -> int | None:
        """The admin group's chat id now (None: no admin group configured)."""
        return self._id

    def is_admin_chat(self, chat_id: int) -> bool:
        return self._id is not None and chat_id == self._id

    async def load(self) -> None:
        """Apply a move recorded earlier (by this process before a restart, or a replica)."""
        if self.configured is None:
            return
        async with self.sessions() as session:
            moved = await self._stored(session, self.configured)
        if moved is not None and moved != self._id:
            log.info("admin_chat_moved configured=%s now=%s", self.configured, moved)
            self._id = moved

    async def record_move(self, session: AsyncSession, old: int, new: int) -> bool:
        """In the caller's transaction: if ``old`` is the admin group, store ``new`` as its id
        from now on. True if it was the admin group; call ``adopt`` after the commit."""
        if old not in (self._id, self.configured):
            return False
        row = await session.get(RuntimeSetting, _key(self.configured or old))
        if row is None:
            session.add(
                RuntimeSetting(
                    key=_key(self.configured or old), value=str(new), updated_at=utcnow()
                )
            )
        else:
            row.value, row.updated_at = str(new), utcnow()
        return True

    def adopt(self, new: int) -> None:
        self._id = new

    @staticmethod
    async def _stored(session: AsyncSession, old: int) -> int | None:
        value = (
            await session.execute(
                select(RuntimeSetting.value).where(RuntimeSetting.key == _key(old))
            )
        ).scalar_one_or_none()
        return int(value) if value is not None else None
