"""The sender's loop: claim due rows per chat, send each chat's rows in order, in pace."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from aiogram import Bot
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from db import repo
from db.models import OutboxMessage
from db.status import OutboxStatus
from processing.outbox.coalesce import COALESCE_MAX, chat_bundles, joined_row
from processing.outbox.direct import DirectSends
from processing.outbox.limits import READY_HORIZON, RateLimiter, SendLimits
from processing.outbox.outcomes import SendOutcomes
from processing.outbox.progress import BroadcastProgress
from processing.outbox.shared import SharedBudget
from services.broadcast import BroadcastService
from services.notify import Notifier
from services.vault import KeyVault

log = logging.getLogger(__name__)

BATCH = 200  # rows claimed per round: ~7 s of sending at 30/s, far inside the lease
CANDIDATES = 500  # pending rows looked at per round (some belong to chats that must wait)
# Short on purpose: rows a killed process had claimed stay hidden until it runs out,
# and every later message of those chats waits behind them (per-chat order). A batch
# takes ~7 s at 30/s and a 429 releases what is still queued, so 20 s is enough.
CLAIM_LEASE = timedelta(seconds=20)


class OutboxSender(SendOutcomes):
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bot: Bot,
        vault: KeyVault,
        notifier: Notifier,
        *,
        limits: SendLimits | None = None,
        progress_interval: float = 3.0,
        shared: SharedBudget | None = None,
        forget_user: Callable[[int], None] = lambda _user_id: None,
    ) -> None:
        self.sessions = sessions
        self.forget_user = forget_user
        # Every replica's Telegram budget (Redis), on top of this process's own pacing.
        self.shared = shared
        self.bot = bot
        self.vault = vault
        self.notifier = notifier
        self.configure(limits or SendLimits())
        self._paused_until = 0.0
        self._wake = asyncio.Event()
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.sent_count = 0
        self.progress = BroadcastProgress(BroadcastService(sessions), bot, progress_interval)

    def configure(self, limits: SendLimits) -> None:
        """Replace the limits (and forget what was sent under the old ones)."""
        self.limits = limits
        self._limiter = RateLimiter(limits)
        if self.shared is not None:
            self.shared.configure(limits)
        self._overall_lock = asyncio.Lock()
        self._pool = asyncio.Semaphore(limits.concurrency)
        self._replayed = False
        self._booked: dict[int, str] = {}  # chat → its send's booking in the shared budget

    async def _replay_recent(self) -> None:
        """Tell the new limiter what was sent just before it existed (a restart, another
        process that has stopped): the limits are kept exactly, with no margin that
        would absorb a previous process's last second. ``sent_at`` is written after
        Telegram answered, so it is never earlier than the send Telegram counted."""
        now = utcnow()
        clock = time.monotonic()
        memory = self._limiter.memory()
        since = now - timedelta(seconds=memory)
        async with self.sessions() as session:
            recent = (
                await session.execute(
                    select(OutboxMessage.chat_id, OutboxMessage.sent_at).where(
                        OutboxMessage.status == OutboxStatus.SENT.value,
                        OutboxMessage.sent_at >= since,
                    )
                )
            ).all()
        self._limiter.replay(
            [
                (chat_id, clock - (now - sent_at).total_seconds())
                for chat_id, sent_at in recent
                if sent_at is not None
            ]
        )
        self._replayed = True

    def direct_sends(self) -> DirectSends:
        """The request middleware that fits a handler's own sends into our limits."""
        return DirectSends(self._direct_slot, self._direct_done)

    async def _direct_slot(self, chat_id: int) -> str:
        """A handler's send waits for a free place in the bot's overall second, taking
        the overall lock's next turn (ahead of the lanes queued for it); returns its
        booking in the shared budget ("" without one)."""
        async with self._overall_lock:
            while True:
                wait = self._limiter.overall.delay(time.monotonic())
                booking = ""
                if wait <= 0 and self.shared is not None:
                    # The overall budget only: the chat's pace does not hold an answer.
                    booked = await self.shared.reserve(chat_id, overall_only=True)
                    wait, booking = booked.wait, booked.member
                if wait <= 0:
                    self._limiter.take(chat_id, time.monotonic())
                    return booking
                await asyncio.sleep(wait)

    async def _direct_done(self, chat_id: int, booking: str) -> None:
        self._limiter.settle(chat_id, time.monotonic())
        if booking and self.shared is not None:
            await self.shared.settle(chat_id, booking)

    def wake(self) -> None:
        """New rows were committed: send now rather than at the next tick."""
        self._wake.set()

    async def run_forever(self, idle: float = 1.0) -> None:
        progress = asyncio.create_task(self.progress.run_forever())
        try:
            while not self._stopping:
                busy = False
                try:
                    busy = await self.run_once() > 0
                except asyncio.CancelledError:
                    raise
                except Exception:  # the sender must outlive any one bad row or DB hiccup
                    log.exception("outbox_round_failed")
                if self._stopping:
                    break
                if busy:
                    continue  # more may be due at once: a long queue is not made to idle
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=idle)
                self._wake.clear()
        finally:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the sends in flight, release the rest of the claimed rows, stop."""
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)

    async def run_once(self) -> int:
        """Send what is due now; returns the number of messages sent."""
        if self._stopping or time.monotonic() < self._paused_until:
            return 0
        self._idle.clear()
        try:
            if not self._replayed:
                await self._replay_recent()
            rows = await self._claim()
            lanes: dict[int, list[OutboxMessage]] = {}
            for row in rows:
                lanes.setdefault(row.chat_id, []).append(row)
            results = await asyncio.gather(*(self._lane(chat_rows) for chat_rows in lanes.values()))
            return sum(results)
        finally:
            self._idle.set()

    async def _lane(self, rows: list[OutboxMessage]) -> int:
        """One chat's claimed rows, strictly in order; stops at the first that did not go."""
        sent = 0
        chat_id = rows[0].chat_id
        bundles = chat_bundles(rows) if chat_id < 0 else [[row] for row in rows]
        for index, bundle in enumerate(bundles):
            later = [r.id for b in bundles[index + 1 :] for r in b]
            delay = self._limiter.chat_delay(chat_id, time.monotonic())
            if delay > 0:
                await asyncio.sleep(delay)
            async with self._pool:
                if not await self._acquire_slot(chat_id):
                    # Paused by a 429 or stopping: the rest goes back for a later round.
                    await self._release([r.id for r in bundle] + later)
                    return sent
                ok = await self._send_bundle(bundle)
            if not ok:
                # Keep the chat's order: nothing after a failed message goes first.
                await self._release(later)
                return sent
            sent += len(bundle)
        return sent

    async def _send_bundle(self, rows: list[OutboxMessage]) -> bool:
        """Send one row, or several joined into one message; all share the outcome."""
        if len(rows) == 1:
            return await self._send_one(rows[0])
        joined = joined_row(rows)
        ok = await self._send_one(joined)
        if ok:
            for row in rows[1:]:
                await self._finish(row, OutboxStatus.SENT)
            self.sent_count += len(rows) - 1
        else:
            # _send_one recorded the outcome on the first row; the others were only
            # claimed, so they go back and are joined again next round.
            await self._release([row.id for row in rows[1:]])
        return ok

    async def _acquire_slot(self, chat_id: int) -> bool:
        """Wait for the overall pace and this chat's limits; False if sending must stop
        (or, with replicas, this chat must wait longer than a claim should be held)."""
        async with self._overall_lock:  # FIFO: lanes take turns in claim order
            while True:
                now = time.monotonic()
                if self._stopping or now < self._paused_until:
                    return False
                wait = max(self._limiter.overall.delay(now), self._limiter.chat_delay(chat_id, now))
                if wait <= 0 and self.shared is not None:
                    booked = await self.shared.reserve(chat_id)
                    now = time.monotonic()
                    if booked.paused:
                        # Another replica met a 429: Telegram blocks the whole bot.
                        self._paused_until = max(self._paused_until, now + booked.wait)
                        return False
                    if booked.wait > READY_HORIZON:
                        # Other replicas spent this chat's budget (the admin group's 20 a
                        # minute): give the rows back rather than sit on the claim, and
                        # leave the chat out of the next claims until it may send.
                        self._limiter.hold(chat_id, now + booked.wait)
                        return False
                    wait = booked.wait
                    if booked.member:
                        self._booked[chat_id] = booked.member
                if wait <= 0:
                    self._limiter.take(chat_id, now)
                    return True
                await asyncio.sleep(wait)

    async def _claim(self) -> list[OutboxMessage]:
        now = utcnow()
        clock = time.monotonic()
        waiting = self._limiter.waiting_chats(clock)
        async with self.sessions() as session, session.begin():
            query = select(OutboxMessage).where(OutboxMessage.status == OutboxStatus.PENDING.value)
            if waiting:
                # Whole chats are left out, so no later row of theirs can overtake.
                query = query.where(OutboxMessage.chat_id.not_in(waiting))
            candidates = (
                (await session.execute(query.order_by(OutboxMessage.id).limit(CANDIDATES)))
                .scalars()
                .all()
            )
            chosen: list[OutboxMessage] = []
            blocked: set[int] = set()
            allowance: dict[int, int] = {}
            for row in candidates:
                if len(chosen) >= BATCH:
                    break
                if row.chat_id in blocked:
                    continue
                if row.chat_id not in allowance:
                    allowance[row.chat_id] = self._limiter.chat_allowance(row.chat_id, clock)
                    if row.chat_id < 0:
                        allowance[row.chat_id] *= COALESCE_MAX  # joined, see coalesce.chat_bundles
                due = (
                    allowance[row.chat_id] > 0
                    and row.next_attempt_at <= now
                    and (row.lease_until is None or row.lease_until < now)
                )
                if not due:
                    # An earlier message of this chat waits: later ones wait behind it.
                    blocked.add(row.chat_id)
                    continue
                chosen.append(row)
                allowance[row.chat_id] -= 1
            if not chosen:
                return []
            # One compare-and-set for the batch; RETURNING says which rows are ours.
            won = set(
                (
                    await session.execute(
                        update(OutboxMessage)
                        .where(
                            OutboxMessage.id.in_([row.id for row in chosen]),
                            OutboxMessage.status == OutboxStatus.PENDING.value,
                            repo.lease_free(OutboxMessage.lease_until, now),
                        )
                        .values(lease_until=now + CLAIM_LEASE)
                        .returning(OutboxMessage.id)
                        .execution_options(synchronize_session=False)
                    )
                ).scalars()
            )
            claimed: list[OutboxMessage] = []
            lost: set[int] = set()
            give_back: list[int] = []
            for row in chosen:
                if row.chat_id in lost or row.id not in won:
                    # Another process took an earlier row of this chat: ours must not
                    # overtake it, so the later ones go back.
                    lost.add(row.chat_id)
                    if row.id in won:
                        give_back.append(row.id)
                    continue
                claimed.append(row)
            if give_back:
                await session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id.in_(give_back))
                    .values(lease_until=None)
                    .execution_options(synchronize_session=False)
                )
            return claimed
