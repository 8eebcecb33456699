"""Admin broadcasts: a draft, a confirm that queues one outbox row per reachable buyer, and
progress computed from those rows (so it survives a restart).

Draft → queued is a compare-and-set: a double tap, a second admin or a retried update
queues once. Each row carries ``broadcast_id`` and the dedupe key
``broadcast:<id>:<user>``, so even a repeated queueing writes nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from db import repo
from db.models import Broadcast, OutboxMessage, User
from db.status import BroadcastStatus, OutboxStatus

# Rows per INSERT: well under SQLite's bound on parameters in one statement.
INSERT_CHUNK = 500
UNREACHABLE_STATUSES = (OutboxStatus.DROPPED, OutboxStatus.FAILED)


@dataclass(frozen=True)
class Draft:
    id: int
    text: str
    recipients: int


@dataclass(frozen=True)
class Progress:
    id: int
    total: int
    sent: int
    unreachable: int  # dropped (blocked the bot) or failed for good
    pending: int
    chat_id: int | None
    message_id: int | None
    language: str
    queued_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.pending == 0


class BroadcastService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.on_queued = on_queued

    async def draft(self, admin_id: int, text: str) -> Draft:
        """Record the message (nothing is sent yet) and count who would get it."""
        async with self.sessions() as session, session.begin():
            row = Broadcast(
                text=text,
                created_by=admin_id,
                status=BroadcastStatus.DRAFT.value,
                created_at=utcnow(),
            )
            session.add(row)
            await session.flush()
            count = await _reachable_count(session)
            return Draft(id=row.id, text=text, recipients=count)

    async def confirm(self, broadcast_id: int, chat_id: int, message_id: int | None) -> int | None:
        """Queue the draft for every reachable buyer; the number queued, or None when it
        was not a draft any more (already queued, cancelled, unknown)."""
        now = utcnow()
        async with self.sessions() as session, session.begin():
            claimed = await session.execute(
                update(Broadcast)
                .where(
                    Broadcast.id == broadcast_id, Broadcast.status == BroadcastStatus.DRAFT.value
                )
                .values(
                    status=BroadcastStatus.QUEUED.value,
                    queued_at=now,
                    progress_chat_id=chat_id,
                    progress_message_id=message_id,
                )
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            text = (
                await session.execute(select(Broadcast.text).where(Broadcast.id == broadcast_id))
            ).scalar_one()
            users = list(
                (
                    await session.execute(
                        select(User.id).where(User.reachable.is_(True)).order_by(User.id)
                    )
                ).scalars()
            )
            rows: list[dict[str, Any]] = [
                {
                    "chat_id": user_id,
                    "kind": "text",
                    "text": text,
                    "payload": None,
                    "dedupe_key": f"broadcast:{broadcast_id}:{user_id}",
                    "broadcast_id": broadcast_id,
                    "category": "broadcast",
                    "status": OutboxStatus.PENDING.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for user_id in users
            ]
            for start in range(0, len(rows), INSERT_CHUNK):
                await _insert_ignoring_duplicates(session, rows[start : start + INSERT_CHUNK])
            total = int(
                (
                    await session.execute(
                        select(func.count())
                        .select_from(OutboxMessage)
                        .where(OutboxMessage.broadcast_id == broadcast_id)
                    )
                ).scalar_one()
            )
            await session.execute(
                update(Broadcast).where(Broadcast.id == broadcast_id).values(total=total)
            )
        if self.on_queued is not None:
            self.on_queued()
        return total

    async def cancel(self, broadcast_id: int) -> bool:
        async with self.sessions() as session, session.begin():
            result = await session.execute(
                update(Broadcast)
                .where(
                    Broadcast.id == broadcast_id, Broadcast.status == BroadcastStatus.DRAFT.value
                )
                .values(status=BroadcastStatus.CANCELLED.value, finished_at=utcnow())
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def active(self) -> list[Progress]:
        """Progress of every queued broadcast, counted from its outbox rows."""
        async with self.sessions() as session:
            broadcasts = list(
                (
                    await session.execute(
                        select(Broadcast)
                        .where(Broadcast.status == BroadcastStatus.QUEUED.value)
                        .order_by(Broadcast.id)
                    )
                ).scalars()
            )
            result: list[Progress] = []
            for b in broadcasts:
                counts: dict[str, int] = {
                    status: int(n)
                    for status, n in await session.execute(
                        select(OutboxMessage.status, func.count())
                        .where(OutboxMessage.broadcast_id == b.id)
                        .group_by(OutboxMessage.status)
                    )
                }
                result.append(
                    Progress(
                        id=b.id,
                        total=b.total,
                        sent=counts.get(OutboxStatus.SENT, 0),
                        unreachable=sum(counts.get(s, 0) for s in UNREACHABLE_STATUSES),
                        pending=counts.get(OutboxStatus.PENDING, 0),
                        chat_id=b.progress_chat_id,
                        message_id=b.progress_message_id,
                        language=await repo.user_language(session, b.created_by),
                        queued_at=b.queued_at,
                    )
                )
            return result

    async def finish(self, broadcast_id: int) -> bool:
        """queued → done once nothing is pending; False if someone else finished it."""
        async with self.sessions() as session, session.begin():
            result = await session.execute(
                update(Broadcast)
                .where(
                    Broadcast.id == broadcast_id, Broadcast.status == BroadcastStatus.QUEUED.value
                )
                .values(status=BroadcastStatus.DONE.value, finished_at=utcnow())
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def status(self, broadcast_id: int) -> str | None:
        async with self.sessions() as session:
            return (
                await session.execute(select(Broadcast.status).where(Broadcast.id == broadcast_id))
            ).scalar_one_or_none()


async def _reachable_count(session: AsyncSession) -> int:
    return int(
        (
            await session.execute(
                select(func.count()).select_from(User).where(User.reachable.is_(True))
            )
        ).scalar_one()
    )


async def _insert_ignoring_duplicates(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """One multi-row INSERT; a row whose dedupe key exists already is skipped."""
    if not rows:
        return
    insert = repo.upsert_insert(session)
    await session.execute(
        insert(OutboxMessage).values(rows).on_conflict_do_nothing(index_elements=["dedupe_key"])
    )
