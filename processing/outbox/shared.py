"""Telegram's send budget shared by every replica on one bot token, through Redis.

Telegram counts per bot, not per process: two replicas pacing themselves at 30/s each
send 60/s and earn 429s, and each would spend the admin group's 20 a minute on its own.
With ``REDIS_URL`` set, every send first reserves its place here — one Lua script, so
the check and the booking are one atomic step for all replicas — and a 429 seen by one
replica pauses them all (Telegram blocks the whole bot for ``retry_after``).

The in-process limiter (``limits.RateLimiter``) still paces each replica; this only adds
what the others spent. Windows are sliding and, as in ``limits``, count a send from its
start until a window after its answer (``settle``): booked as in flight (scored
``FLIGHT_MS`` ahead), then re-scored when the answer came, all by Redis's clock
(``TIME``), so replicas with skewed clocks agree and the limits can be kept exactly.
The per-chat limit is kept as "``burst`` sends in any ``burst / rate`` seconds", a
little stricter than Telegram's bucket (3 at once, then 1/s), which costs nothing a
buyer notices.

Redis unreachable: sending goes on under the local limiter alone, with a WARNING at most
once a minute. Stopping every message to buyers because the shared counter is down would
turn a Redis outage into a shop outage; the cost is that two replicas may briefly exceed
the budget together, which Telegram answers with a 429 that the outbox already handles
(pause, retry the row, nothing lost or sent twice).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from processing.outbox.limits import SendLimits

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

WARN_EVERY = 60.0  # seconds between "Redis unreachable" warnings
# A booked send counts as in flight until it is settled, or for this long (a replica that
# died mid-send): longer than any send waits for its answer.
FLIGHT_MS = 30_000
POLL_MS = 10  # every slot is in flight: look again shortly (an answer frees one)

# KEYS: overall, chat, group ("" when the chat is no group), pause.
# ARGV: overall_limit, overall_window_ms, chat_limit, chat_window_ms, group_limit,
#       group_window_ms, member, flight_ms, poll_ms.
# Returns {wait_ms, paused}: 0 = the send is booked; otherwise wait that long (paused = 1
# when a replica saw a 429 and everybody waits).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause = redis.call('PTTL', KEYS[4])
if pause and pause > 0 then
  return {pause, 1}
end
local wait = 0
local function check(key, limit, window)
  if key == '' then return end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then
    local oldest = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
    local free_at = oldest + window
    if oldest > now then free_at = now + tonumber(ARGV[9]) end
    if free_at - now > wait then wait = free_at - now end
  end
end
check(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
check(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
check(KEYS[3], tonumber(ARGV[5]), tonumber(ARGV[6]))
if wait > 0 then
  return {math.max(1, wait), 0}
end
local function book(key, window)
  if key == '' then return end
  redis.call('ZADD', key, now + tonumber(ARGV[8]), ARGV[7])
  redis.call('PEXPIRE', key, window + tonumber(ARGV[8]) + 1000)
end
book(KEYS[1], tonumber(ARGV[2]))
book(KEYS[2], tonumber(ARGV[4]))
book(KEYS[3], tonumber(ARGV[6]))
return {0, 0}
"""

# KEYS: overall, chat, group (as above). ARGV: member. The answer came: the send counts
# from now (its window ends a window after the answer), not from its booking.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, key in ipairs(KEYS) do
  if key ~= '' then redis.call('ZADD', key, 'XX', now, ARGV[1]) end
end
return 0
"""


@dataclass(frozen=True)
class Reservation:
    wait: float  # seconds; 0: booked, go
    paused: bool = False  # every replica waits out a 429
    member: str = ""  # the booking, for ``settle``


GO = Reservation(0.0)


def budget_prefix(bot_token: str) -> str:
    """Keys of one bot token, never the token itself (a hash names it)."""
    return "aitoken:tg:" + hashlib.sha256(bot_token.encode()).hexdigest()[:16] + ":"


class SharedBudget:
    def __init__(self, redis: Redis, prefix: str, limits: SendLimits) -> None:
        self.redis = redis
        self.prefix = prefix
        self.configure(limits)
        self._script: Any = redis.register_script(_RESERVE)
        self._settle: Any = redis.register_script(_SETTLE)
        self._seq = 0
        self._process = f"{time.time_ns()}"
        self._warned_at = -WARN_EVERY

    def configure(self, limits: SendLimits) -> None:
        self.limits = limits

    async def reserve(self, chat_id: int, *, overall_only: bool = False) -> Reservation:
        """Book one send to ``chat_id`` in every replica's budget, or say how long to wait.
        ``overall_only``: in the bot's overall budget alone (a handler's answer)."""
        limits = self.limits
        self._seq += 1
        chat_window = limits.per_chat_burst / limits.per_chat_per_second
        member = f"{self._process}:{self._seq}"
        args = [
            max(1, int(limits.global_per_second)),
            1000,
            limits.per_chat_burst,
            int(chat_window * 1000),
            limits.group_limit,
            int(limits.group_window * 1000),
            member,
            FLIGHT_MS,
            POLL_MS,
        ]
        try:
            wait_ms, paused = await self._script(
                keys=[*self._keys(chat_id, overall_only), self.prefix + "pause"], args=args
            )
        except Exception as exc:  # any Redis failure: the local limiter alone (docstring)
            self._warn(exc)
            return GO
        if wait_ms:
            return Reservation(int(wait_ms) / 1000, bool(paused))
        return Reservation(0.0, member=member)

    async def settle(self, chat_id: int, member: str) -> None:
        """The booked send was answered: it counts until a window from now."""
        try:
            await self._settle(keys=self._keys(chat_id), args=[member])
        except Exception as exc:  # the booking stays in flight until FLIGHT_MS: safe
            self._warn(exc)

    def _keys(self, chat_id: int, overall_only: bool = False) -> list[str]:
        if overall_only:
            return [self.prefix + "all", "", ""]
        return [
            self.prefix + "all",
            f"{self.prefix}chat:{chat_id}",
            f"{self.prefix}group:{chat_id}" if chat_id < 0 else "",
        ]

    async def pause(self, seconds: float) -> None:
        """A 429: every replica waits ``seconds`` (a longer pause already set stands)."""
        key = self.prefix + "pause"
        try:
            current = await self.redis.pttl(key)
            wanted = int(seconds * 1000)
            if current is None or current < wanted:
                await self.redis.set(key, "1", px=max(1, wanted))
        except Exception as exc:
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning(
                "telegram_budget_unshared error=%s: Redis unreachable, each replica "
                "paces itself until it is back",
                type(exc).__name__,
            )
