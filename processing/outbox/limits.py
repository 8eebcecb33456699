"""Telegram's send limits, kept exactly (package docstring).

Telegram counts a send when it arrives, which is somewhere between our start and the
answer. So a send occupies its window slot from its start until ``window`` after its
answer: the 31st send of a second starts only once the 1st was answered a second ago,
wherever in their round trips both landed. That costs one round trip per 30 sends
(~2 % on a 20 ms round trip) and never a 429; pacing *under* 30 would cost more."""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

# A chat is claimed from only if its limits let it send within this horizon, so claimed
# rows never sit out their lease waiting for a slow group.
READY_HORIZON = 1.0


@dataclass(frozen=True)
class SendLimits:
    global_per_second: float = 30.0  # Telegram: ~30/s (the Bots FAQ's figure)
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
        # Starts are spaced at twice the limit's pace: a steady stream keeps round trips
        # short (no burst of 30 at once), yet a gap (a claim round) can be caught up.
        self.overall = _Window(
            max(1, int(limits.global_per_second)),
            1.0,
            spacing=0.5 / limits.global_per_second,
        )
        self._chats: dict[int, _Bucket] = {}
        self._groups: dict[int, _Window] = {}
        # Chats another replica's sends keep waiting (shared.SharedBudget): chat → until.
        self._held: dict[int, float] = {}

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

    def hold(self, chat_id: int, until: float) -> None:
        """This chat may not send before ``until`` (what other replicas spent says so)."""
        self._held[chat_id] = max(until, self._held.get(chat_id, until))

    def chat_delay(self, chat_id: int, now: float) -> float:
        """Seconds until this chat may send again (the overall pace aside)."""
        wait = self._bucket(chat_id, now).delay(now)
        held = self._held.get(chat_id)
        if held is not None:
            if held <= now:
                del self._held[chat_id]
            else:
                wait = max(wait, held - now)
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
        chats = set(self._chats) | set(self._groups) | set(self._held)
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

    def replay(self, sends: list[tuple[int, float]]) -> None:
        """Count sends made before this limiter existed (chat, answered at), oldest first:
        Telegram still counts a previous process's last second and last group window, so
        a restarted sender must not spend them again."""
        for chat_id, at in sorted(sends, key=lambda send: send[1]):
            self.take(chat_id, at)
            self.settle(chat_id, at)

    def memory(self) -> float:
        """Seconds of past sends that still bear on the next one (see ``replay``)."""
        chat = self.limits.per_chat_burst / self.limits.per_chat_per_second
        return max(1.0, chat, self.limits.group_window)

    def _forget_idle(self, now: float) -> None:
        """A chat whose bucket is full again is as good as new: keep memory bounded."""
        if len(self._chats) < 1000:
            return
        for chat_id in [c for c, b in self._chats.items() if b.full(now)]:
            del self._chats[chat_id]
