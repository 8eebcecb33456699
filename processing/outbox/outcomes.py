"""Where each Telegram answer to a send ends: sent, retried, followed, or failed.

- 429 pauses ALL sending for ``retry_after`` (Telegram blocks the whole bot);
- 400 with ``migrate_to_chat_id`` (a group upgraded to a supergroup): the chat's pending
  rows move to the new id and are resent there; if it was the admin group, the new id is
  stored and used from then on (``AdminChat``), and the group is told;
- 403: the buyer blocked us (or the bot left the group): marked unreachable, their
  pending messages dropped with the reason;
- 400, 404, 413: the request itself is wrong: failed, with the reason;
- anything else (5xx, network, 401, 409, an answer that is not JSON): retried with
  exponential back-off, bounded, the reason recorded; after ``MAX_ATTEMPTS`` failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNotFound,
    TelegramRetryAfter,
)
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from core.clock import utcnow
from db import repo
from db.models import OutboxMessage, User
from db.status import OutboxStatus
from locales import translator
from processing.outbox.delivery import Delivery
from processing.outbox.direct import OUTBOX_SENDING
from processing.outbox.limits import RateLimiter
from processing.outbox.shared import SharedBudget
from services.notify import Notifier

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8


class SendOutcomes(Delivery):
    """Part of ``OutboxSender`` (a mixin sharing its instance)."""

    notifier: Notifier
    sent_count: int
    _limiter: RateLimiter
    shared: SharedBudget | None
    _paused_until: float
    _booked: dict[int, str]
    _wake: asyncio.Event
    # Told after a buyer is marked unreachable, so a cache of buyers (services.users.
    # UserCache) drops them and their next update marks them reachable again.
    forget_user: Callable[[int], None]

    async def _send_one(self, row: OutboxMessage) -> bool:
        sending = OUTBOX_SENDING.set(True)  # charged by our loop, not by DirectSends
        try:
            try:
                await self._deliver(row)
            finally:
                self._limiter.settle(row.chat_id, time.monotonic())
                OUTBOX_SENDING.reset(sending)
                booked = self._booked.pop(row.chat_id, None)
                if booked is not None and self.shared is not None:
                    await self.shared.settle(row.chat_id, booked)
        except TelegramRetryAfter as exc:
            self._paused_until = max(self._paused_until, time.monotonic() + exc.retry_after)
            log.warning("outbox_rate_limited chat=%s retry_after=%s", row.chat_id, exc.retry_after)
            if self.shared is not None:
                await self.shared.pause(exc.retry_after)  # every replica stops, not just us
            await self._retry(row, delay=float(exc.retry_after), error="429", count=False)
            return False
        except TelegramMigrateToChat as exc:
            # Before TelegramBadRequest: it is a 400 too, but the message can still go.
            await self.follow_migration(row.chat_id, exc.migrate_to_chat_id)
            return False
        except TelegramForbiddenError as exc:
            await self._unreachable(row.chat_id, str(exc))
            return False
        except (
            TelegramBadRequest,
            TelegramNotFound,
            TelegramEntityTooLarge,  # a TelegramNetworkError, but resending cannot help
            LookupError,
            ValueError,
        ) as exc:
            # Permanent: retrying the same request cannot succeed. Recorded for the operator.
            await self._finish(row, OutboxStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
            log.error("outbox_bad_request id=%s chat=%s error=%s", row.id, row.chat_id, exc)
            return False
        except (TelegramAPIError, ClientDecodeError, TimeoutError) as exc:
            # 5xx, network, 401 (token revoked), 409, unknown codes, an answer that is not
            # Telegram's JSON (a proxy's error page): may pass later; bounded by MAX_ATTEMPTS.
            error = f"{type(exc).__name__}: {exc}"
            log.warning("outbox_retry id=%s chat=%s error=%s", row.id, row.chat_id, error)
            await self._retry(row, delay=min(300.0, 2.0**row.attempts), error=error)
            return False
        await self._finish(row, OutboxStatus.SENT)
        self.sent_count += 1
        return True

    async def _finish(
        self, row: OutboxMessage, status: OutboxStatus, error: str | None = None
    ) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id)
                .values(
                    status=status.value,
                    sent_at=utcnow() if status == OutboxStatus.SENT else None,
                    lease_until=None,
                    attempts=OutboxMessage.attempts + 1,
                    last_error=error[:1000] if error else None,
                )
            )

    async def _retry(
        self, row: OutboxMessage, *, delay: float, error: str, count: bool = True
    ) -> None:
        attempts = row.attempts + (1 if count else 0)
        if attempts >= MAX_ATTEMPTS:
            await self._finish(row, OutboxStatus.FAILED, error=f"gave up: {error}")
            log.error("outbox_gave_up id=%s chat=%s error=%s", row.id, row.chat_id, error)
            return
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id)
                .values(
                    attempts=attempts,
                    lease_until=None,
                    last_error=error[:1000],
                    next_attempt_at=utcnow() + timedelta(seconds=delay),
                )
            )

    async def _release(self, row_ids: list[int]) -> None:
        if not row_ids:
            return
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id.in_(row_ids),
                    OutboxMessage.status == OutboxStatus.PENDING.value,
                )
                .values(lease_until=None)
            )

    async def follow_migration(self, old: int, new: int) -> None:
        """Telegram upgraded a group to a supergroup (we saw its service message, or a send
        was answered with ``migrate_to_chat_id``): the chat's pending rows move to the new
        id and go out from there, in their order. If it was the admin group, the new id is
        stored and replaces ADMIN_CHAT_ID from now on. Safe to call twice."""
        admin_chat = self.notifier.admin_chat
        try:
            async with self.sessions() as session, session.begin():
                was_admin = await admin_chat.record_move(session, old, new)
                await session.execute(
                    update(OutboxMessage)
                    .where(
                        OutboxMessage.chat_id == old,
                        OutboxMessage.status == OutboxStatus.PENDING.value,
                    )
                    .values(
                        chat_id=new,
                        lease_until=None,
                        last_error=f"chat {old} was upgraded to supergroup {new}",
                    )
                )
                if was_admin:
                    await repo.add_outbox(
                        session,
                        chat_id=new,
                        text=translator(self.notifier.admin_language)(
                            "admin.chat_moved", old=old, new=new
                        ),
                        dedupe_key=f"admin_chat_moved:{old}:{new}",
                    )
        except IntegrityError:
            # Another replica recorded the same move at the same moment: the rows stay
            # claimed only until the lease ends, and the next round sees the move.
            log.warning("chat_migrated_race old=%s new=%s", old, new)
            return
        if was_admin:
            admin_chat.adopt(new)
        log.warning("chat_migrated old=%s new=%s admin_group=%s", old, new, was_admin)
        self._wake.set()  # send the moved rows now

    async def _unreachable(self, chat_id: int, error: str) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(update(User).where(User.id == chat_id).values(reachable=False))
            await session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.chat_id == chat_id,
                    OutboxMessage.status == OutboxStatus.PENDING.value,
                )
                .values(
                    status=OutboxStatus.DROPPED.value, lease_until=None, last_error=error[:1000]
                )
            )
        self.forget_user(chat_id)
        log.warning("chat_unreachable chat=%s error=%s", chat_id, error)
