"""Outbox sender: delivers queued messages at least once, in order per chat, within
Telegram's limits.

Rows are claimed with a short lease (compare-and-set), sent, then marked sent. A crash
after sending but before marking re-sends (at-least-once); a crash before sending
loses nothing. A graceful ``stop()`` lets in-flight sends finish and releases the rest,
so a restart re-sends nothing.

Telegram's limits (SPEC §6): about 30 messages/s overall, about 1/s per chat with short
bursts, 20/min per group. The sender paces itself a little under them:

- overall: at least ``1/global_per_second`` between send starts (28/s), and never more
  than ``global_per_second`` sends started-or-finished within one second;
- per chat: a token bucket (``per_chat_burst`` 3, refilled ``per_chat_per_second`` 1/s);
- per group (negative chat id): at most ``group_limit`` (20) per ``group_window`` (60 s).

Windows and buckets are charged at the *end* of a send (the answer came back), which is
never earlier than the moment Telegram saw it: so loopback jitter or a stalled event loop
cannot squeeze two sends into one of Telegram's windows. Chats are sent to concurrently
(``concurrency`` requests in flight at most), but each chat's rows go one after another.

Every Telegram error ends somewhere defined (``_send_one``), never left pending:

- 429 pauses ALL sending for ``retry_after`` (Telegram blocks the whole bot);
- 400 with ``migrate_to_chat_id`` (a group upgraded to a supergroup): the chat's pending
  rows move to the new id and are resent there; if it was the admin group, the new id is
  stored and used from then on (``AdminChat``), and the group is told;
- 403: the buyer blocked us (or the bot left the group): marked unreachable, their
  pending messages dropped with the reason;
- 400, 404, 413: the request itself is wrong: failed, with the reason;
- anything else (5xx, network, 401, 409, an answer that is not JSON): retried with
  exponential back-off, bounded, the reason recorded; after ``MAX_ATTEMPTS`` failed.

Limits are per process: two replicas sharing a bot token should halve them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import html
import logging
import math
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiogram import Bot
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
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from db import repo
from db.models import OutboxMessage, User
from locales import translator
from services.broadcast import BroadcastService, Progress
from services.message_text import split_html, telegram_length
from services.notify import API_KEY_SLOT, Notifier
from services.vault import KeyVault

log = logging.getLogger(__name__)

BATCH = 200  # rows claimed per round: ~7 s of sending at 28/s, far inside the lease
CANDIDATES = 500  # pending rows looked at per round (some belong to chats that must wait)
# Short on purpose: rows a killed process had claimed stay hidden until it runs out,
# and every later message of those chats waits behind them (per-chat order). A batch
# takes ~7 s at 28/s and a 429 releases what is still queued, so 20 s is enough.
CLAIM_LEASE = timedelta(seconds=20)
MAX_ATTEMPTS = 8
# Admin groups take 20 messages a minute; a busy shop writes more alerts than that.
# Consecutive pending messages to a group are joined into one Telegram message (up to
# this many, within Telegram's 4,096 characters as it counts them) instead of queueing
# for minutes.
COALESCE_MAX = 25
COALESCE_CHARS = 3800
COALESCE_BUTTON_ROWS = 8
# A chat is claimed from only if its limits let it send within this horizon, so claimed
# rows never sit out their lease waiting for a slow group.
READY_HORIZON = 1.0
# The confirm handler edits the progress message to "queued" itself; a tiny broadcast
# may be sent before that edit lands, so "Done" waits this long after queueing.
SETTLE = timedelta(seconds=2)


@dataclass(frozen=True)
class SendLimits:
    global_per_second: float = 28.0  # Telegram: ~30/s
    per_chat_per_second: float = 1.0  # Telegram: ~1/s per chat, short bursts allowed
    per_chat_burst: int = 3
    group_limit: int = 20  # Telegram: 20/min per group
    group_window: float = 60.0  # seconds; tests shorten it
    concurrency: int = 8  # requests in flight at once


class _Bucket:
    """Token bucket: ``burst`` tokens, refilled at ``rate`` per second."""

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self.burst = float(burst)
        self.rate = rate
        self.tokens = float(burst)
        self.stamp = now

    def _level(self, now: float) -> float:
        return min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)

    def delay(self, now: float) -> float:
        return max(0.0, (1.0 - self._level(now)) / self.rate)

    def available(self, now: float, horizon: float) -> int:
        return int(min(self.burst, self._level(now) + horizon * self.rate))

    def take(self, now: float) -> None:
        self.tokens = self._level(now) - 1.0
        self.stamp = now

    def settle(self, done_at: float) -> None:
        # Refill only from the end of the send: the time in flight earns nothing.
        self.stamp = max(self.stamp, done_at)

    def full(self, now: float) -> bool:
        return self._level(now) >= self.burst


class _Window:
    """At most ``limit`` sends per sliding ``window``; a send counts from its start until
    ``window`` after its end, plus a minimum ``spacing`` between starts."""

    def __init__(self, limit: int, window: float, spacing: float = 0.0) -> None:
        self.limit = limit
        self.window = window
        self.spacing = spacing
        self.in_flight = 0
        self.done: collections.deque[float] = collections.deque()
        self.last_start = -math.inf

    def _prune(self, now: float) -> None:
        while self.done and self.done[0] <= now - self.window:
            self.done.popleft()

    def delay(self, now: float) -> float:
        self._prune(now)
        wait = self.last_start + self.spacing - now
        if self.in_flight + len(self.done) >= self.limit:
            # All slots in flight: look again shortly (an answer frees one).
            wait = max(wait, self.done[0] + self.window - now if self.done else 0.01)
        return max(0.0, wait)

    def available(self, now: float) -> int:
        self._prune(now)
        return max(0, self.limit - self.in_flight - len(self.done))

    def take(self, now: float) -> None:
        self.in_flight += 1
        self.last_start = now

    def settle(self, done_at: float) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.done.append(done_at)


class RateLimiter:
    """The three limits of ``SendLimits``; times are ``time.monotonic()`` seconds."""

    def __init__(self, limits: SendLimits) -> None:
        self.limits = limits
        self.overall = _Window(
            max(1, int(limits.global_per_second)), 1.0, spacing=1.0 / limits.global_per_second
        )
        self._chats: dict[int, _Bucket] = {}
        self._groups: dict[int, _Window] = {}

    def _bucket(self, chat_id: int, now: float) -> _Bucket:
        bucket = self._chats.get(chat_id)
        if bucket is None:
            bucket = self._chats[chat_id] = _Bucket(
                self.limits.per_chat_burst, self.limits.per_chat_per_second, now
            )
        return bucket

    def _group(self, chat_id: int) -> _Window | None:
        if chat_id >= 0:
            return None
        group = self._groups.get(chat_id)
        if group is None:
            group = self._groups[chat_id] = _Window(
                self.limits.group_limit, self.limits.group_window
            )
        return group

    def chat_delay(self, chat_id: int, now: float) -> float:
        """Seconds until this chat may send again (the overall pace aside)."""
        wait = self._bucket(chat_id, now).delay(now)
        group = self._group(chat_id)
        return max(wait, group.delay(now)) if group is not None else wait

    def chat_allowance(self, chat_id: int, now: float) -> int:
        """How many of this chat's rows may be claimed now (0: leave them pending)."""
        if self.chat_delay(chat_id, now) > READY_HORIZON:
            return 0
        n = max(1, self._bucket(chat_id, now).available(now, READY_HORIZON))
        group = self._group(chat_id)
        return min(n, max(1, group.available(now))) if group is not None else n

    def waiting_chats(self, now: float) -> list[int]:
        """Chats that cannot send within the horizon (their rows are not even read)."""
        self._forget_idle(now)
        chats = set(self._chats) | set(self._groups)
        return [c for c in chats if self.chat_delay(c, now) > READY_HORIZON]

    def take(self, chat_id: int, now: float) -> None:
        self.overall.take(now)
        self._bucket(chat_id, now).take(now)
        group = self._group(chat_id)
        if group is not None:
            group.take(now)

    def settle(self, chat_id: int, done_at: float) -> None:
        self.overall.settle(done_at)
        self._bucket(chat_id, done_at).settle(done_at)
        group = self._group(chat_id)
        if group is not None:
            group.settle(done_at)

    def _forget_idle(self, now: float) -> None:
        """A chat whose bucket is full again is as good as new: keep memory bounded."""
        if len(self._chats) < 1000:
            return
        for chat_id in [c for c, b in self._chats.items() if b.full(now)]:
            del self._chats[chat_id]


class OutboxSender:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bot: Bot,
        vault: KeyVault,
        notifier: Notifier,
        *,
        limits: SendLimits | None = None,
        progress_interval: float = 3.0,
    ) -> None:
        self.sessions = sessions
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
        self._overall_lock = asyncio.Lock()
        self._pool = asyncio.Semaphore(limits.concurrency)

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
        bundles = _bundles(rows) if chat_id < 0 else [[row] for row in rows]
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
        joined = _joined(rows)
        ok = await self._send_one(joined)
        if ok:
            for row in rows[1:]:
                await self._finish(row, "sent")
            self.sent_count += len(rows) - 1
        else:
            # _send_one recorded the outcome on the first row; the others were only
            # claimed, so they go back and are joined again next round.
            await self._release([row.id for row in rows[1:]])
        return ok

    async def _acquire_slot(self, chat_id: int) -> bool:
        """Wait for the overall pace and this chat's limits; False if sending must stop."""
        async with self._overall_lock:  # FIFO: lanes take turns in claim order
            while True:
                now = time.monotonic()
                if self._stopping or now < self._paused_until:
                    return False
                wait = max(self._limiter.overall.delay(now), self._limiter.chat_delay(chat_id, now))
                if wait <= 0:
                    self._limiter.take(chat_id, now)
                    return True
                await asyncio.sleep(wait)

    async def _claim(self) -> list[OutboxMessage]:
        now = utcnow()
        clock = time.monotonic()
        waiting = self._limiter.waiting_chats(clock)
        async with self.sessions() as session, session.begin():
            query = select(OutboxMessage).where(OutboxMessage.status == "pending")
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
                        allowance[row.chat_id] *= COALESCE_MAX  # joined, see _bundles
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
                            OutboxMessage.status == "pending",
                            (OutboxMessage.lease_until.is_(None))
                            | (OutboxMessage.lease_until < now),
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

    async def _send_one(self, row: OutboxMessage) -> bool:
        try:
            try:
                await self._deliver(row)
            finally:
                self._limiter.settle(row.chat_id, time.monotonic())
        except TelegramRetryAfter as exc:
            self._paused_until = max(self._paused_until, time.monotonic() + exc.retry_after)
            log.warning("outbox_rate_limited chat=%s retry_after=%s", row.chat_id, exc.retry_after)
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
            await self._finish(row, "failed", error=f"{type(exc).__name__}: {exc}")
            log.error("outbox_bad_request id=%s chat=%s error=%s", row.id, row.chat_id, exc)
            return False
        except (TelegramAPIError, ClientDecodeError, TimeoutError) as exc:
            # 5xx, network, 401 (token revoked), 409, unknown codes, an answer that is not
            # Telegram's JSON (a proxy's error page): may pass later; bounded by MAX_ATTEMPTS.
            error = f"{type(exc).__name__}: {exc}"
            log.warning("outbox_retry id=%s chat=%s error=%s", row.id, row.chat_id, error)
            await self._retry(row, delay=min(300.0, 2.0**row.attempts), error=error)
            return False
        await self._finish(row, "sent")
        self.sent_count += 1
        return True

    async def _deliver(self, row: OutboxMessage) -> None:
        payload: dict[str, Any] = row.payload or {}
        text = row.text
        if API_KEY_SLOT in text:
            text = text.replace(API_KEY_SLOT, html.escape(await self._secret_key(payload)))
        markup = _markup(payload.get("buttons"))
        # A long report goes as several messages (buttons under the last). A failure
        # part-way resends the earlier parts too: at-least-once, as for any message.
        parts = split_html(text)
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            await self.bot.send_message(row.chat_id, part, reply_markup=markup if last else None)

    async def _secret_key(self, payload: dict[str, Any]) -> str:
        user_id = int(payload["secret_key_of"])
        async with self.sessions() as session:
            key = await repo.get_api_key(session, user_id)
        if key is None:
            raise LookupError(f"no stored key for user {user_id}")
        return self.vault.decrypt(key.encrypted_key)

    async def _finish(self, row: OutboxMessage, status: str, error: str | None = None) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id)
                .values(
                    status=status,
                    sent_at=utcnow() if status == "sent" else None,
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
            await self._finish(row, "failed", error=f"gave up: {error}")
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
                .where(OutboxMessage.id.in_(row_ids), OutboxMessage.status == "pending")
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
                    .where(OutboxMessage.chat_id == old, OutboxMessage.status == "pending")
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
        self.wake()

    async def _unreachable(self, chat_id: int, error: str) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(update(User).where(User.id == chat_id).values(reachable=False))
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.chat_id == chat_id, OutboxMessage.status == "pending")
                .values(status="dropped", lease_until=None, last_error=error[:1000])
            )
        log.warning("chat_unreachable chat=%s error=%s", chat_id, error)


def _bundles(rows: list[OutboxMessage]) -> list[list[OutboxMessage]]:
    """Consecutive rows of one group chat, joined while they fit one message."""
    bundles: list[list[OutboxMessage]] = []
    size = 0
    for row in rows:
        current = bundles[-1] if bundles else None
        if (
            current is not None
            and _joinable(row)
            and _joinable(current[-1])
            and len(current) < COALESCE_MAX
            and size + telegram_length(row.text) + 2 <= COALESCE_CHARS
        ):
            current.append(row)
            size += telegram_length(row.text) + 2
        else:
            bundles.append([row])
            size = telegram_length(row.text)
    return bundles


def _joinable(row: OutboxMessage) -> bool:
    # A key delivery is decrypted at send time and a broadcast is counted per row.
    return not (row.payload or {}).get("secret_key_of") and row.broadcast_id is None


def _joined(rows: list[OutboxMessage]) -> OutboxMessage:
    """A transient row (never added to a session) carrying the joined text and buttons.

    It keeps the first row's id and attempts, so the send's outcome is recorded there."""
    buttons = [r for row in rows for r in ((row.payload or {}).get("buttons") or [])]
    first = rows[0]
    return OutboxMessage(
        id=first.id,
        chat_id=first.chat_id,
        kind=first.kind,
        text="\n\n".join(row.text for row in rows),
        payload={"buttons": buttons[:COALESCE_BUTTON_ROWS]} if buttons else None,
        attempts=first.attempts,
        next_attempt_at=first.next_attempt_at,
        created_at=first.created_at,
        status=first.status,
    )


class BroadcastProgress:
    """Edits each running broadcast's progress message from its outbox rows.

    Everything is recomputed from the database, so a restarted process carries on where
    the old one stopped. Edits are rare (every ``interval`` seconds, only on change) and
    are not outbox messages: a lost edit is repaired by the next one.
    """

    def __init__(self, service: BroadcastService, bot: Bot, interval: float = 3.0) -> None:
        self.service = service
        self.bot = bot
        self.interval = interval
        self._shown: dict[int, str] = {}

    async def run_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("broadcast_progress_failed")
            await asyncio.sleep(self.interval)

    async def tick(self) -> None:
        for progress in await self.service.active():
            t = translator(progress.language)
            if progress.queued_at is not None and utcnow() - progress.queued_at < SETTLE:
                continue
            if progress.finished:
                text = t(
                    "broadcast.done",
                    id=progress.id,
                    sent=progress.sent,
                    unreachable=progress.unreachable,
                )
                # Edit first, then mark done: a crash in between repeats the edit only.
                if await self._edit(progress, text) and await self.service.finish(progress.id):
                    log.info(
                        "broadcast_done id=%s sent=%s unreachable=%s",
                        progress.id,
                        progress.sent,
                        progress.unreachable,
                    )
                    self._shown.pop(progress.id, None)
                continue
            text = t("broadcast.progress", id=progress.id, sent=progress.sent, total=progress.total)
            if self._shown.get(progress.id) != text:
                await self._edit(progress, text)

    async def _edit(self, progress: Progress, text: str) -> bool:
        """True when the message shows ``text`` now (or there is nothing to edit)."""
        if progress.chat_id is None or progress.message_id is None:
            return True
        try:
            await self.bot.edit_message_text(
                text=text, chat_id=progress.chat_id, message_id=progress.message_id
            )
        except (TelegramBadRequest, TelegramMigrateToChat) as exc:
            # "message is not modified" (shown already), deleted by the admin, or its group
            # was upgraded (old messages stay behind): nothing more to do with it.
            log.info("broadcast_progress_edit id=%s error=%s", progress.id, exc)
        except TelegramAPIError as exc:  # 429, network: the next tick tries again
            log.warning("broadcast_progress_edit_failed id=%s error=%s", progress.id, exc)
            return False
        self._shown[progress.id] = text
        return True


def _markup(buttons: Any) -> InlineKeyboardMarkup | None:
    if not buttons:
        return None
    return InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(**button) for button in row] for row in buttons]
    )
