"""Telegram's size and rate limits, and the flood control that enforces the rates.

The model of Telegram's rates is described in the package docstring (``sandbox.telegram``).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Any

MAX_TEXT_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024
MAX_CALLBACK_DATA_BYTES = 64
MAX_POLL_TIMEOUT = 50  # Telegram caps getUpdates' long poll near this
CALLBACK_MAX_AGE = 15.0  # seconds Telegram lets a callback query wait for its answer

RATE_LIMITED_METHODS = frozenset({"sendmessage", "sendphoto", "senddocument"})


@dataclass
class RateLimits:
    enforce: bool = False
    global_per_second: int = 30
    per_chat_per_second: float = 1.0
    per_chat_burst: int = 3
    group_per_minute: int = 20
    group_window: float = 60.0
    retry_after: int | None = None  # fixed answer; None: seconds until the limit frees

    def to_json(self) -> dict[str, Any]:
        return {
            "enforce": self.enforce,
            "global_per_second": self.global_per_second,
            "per_chat_per_second": self.per_chat_per_second,
            "per_chat_burst": self.per_chat_burst,
            "group_per_minute": self.group_per_minute,
            "group_window": self.group_window,
            "retry_after": self.retry_after,
        }


class FloodControl:
    """Telegram's send limits (package docstring) and the record of what was sent when."""

    def __init__(self) -> None:
        self.limits = RateLimits()
        self._recent: collections.deque[float] = collections.deque()  # admitted, last second
        self._buckets: dict[int, tuple[float, float]] = {}  # chat -> (tokens, stamp)
        self._group_recent: dict[int, collections.deque[float]] = {}
        self.sent: list[tuple[float, int, bool]] = []  # (wall time, chat id, is group) when ok
        self.rejected = 0

    def configure(self, limits: RateLimits) -> None:
        self.limits = limits
        self._recent.clear()
        self._buckets.clear()
        self._group_recent.clear()

    def admit(self, chat_id: int, is_group: bool, now: float) -> int | None:
        """None when the send may go (and it is counted), else the retry_after to answer."""
        limits = self.limits
        if not limits.enforce:
            return None
        waits: list[float] = []
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        if len(self._recent) >= limits.global_per_second:
            waits.append(self._recent[0] + 1.0 - now)
        tokens, stamp = self._buckets.get(chat_id, (float(limits.per_chat_burst), now))
        tokens = min(
            float(limits.per_chat_burst), tokens + (now - stamp) * limits.per_chat_per_second
        )
        if tokens < 1.0:
            waits.append((1.0 - tokens) / limits.per_chat_per_second)
        group = self._group_recent.setdefault(chat_id, collections.deque()) if is_group else None
        if group is not None:
            while group and group[0] <= now - limits.group_window:
                group.popleft()
            if len(group) >= limits.group_per_minute:
                waits.append(group[0] + limits.group_window - now)
        if waits:
            self.rejected += 1
            if limits.retry_after is not None:
                return limits.retry_after
            return max(1, math.ceil(max(waits)))
        self._recent.append(now)
        self._buckets[chat_id] = (tokens - 1.0, now)
        if group is not None:
            group.append(now)
        return None

    def record(self, at: float, chat_id: int, is_group: bool) -> None:
        self.sent.append((at, chat_id, is_group))

    def stats(self) -> dict[str, Any]:
        per_second: dict[int, int] = collections.Counter(int(at) for at, _, _ in self.sent)
        by_chat: dict[int, list[float]] = {}
        groups: set[int] = set()
        for at, chat_id, is_group in self.sent:
            by_chat.setdefault(chat_id, []).append(at)
            if is_group:
                groups.add(chat_id)
        per_chat_max = {
            chat_id: max(collections.Counter(int(at) for at in times).values())
            for chat_id, times in by_chat.items()
        }
        all_times = [at for at, _, _ in self.sent]
        return {
            "limits": self.limits.to_json(),
            "sends": len(self.sent),
            "rejected_429": self.rejected,
            "per_second": {str(second): n for second, n in sorted(per_second.items())},
            "max_per_second": max(per_second.values(), default=0),
            "max_in_any_second": _max_in_window(all_times, 1.0),
            "per_chat_max_per_second": {str(c): n for c, n in per_chat_max.items()},
            "max_per_chat_per_second": max(per_chat_max.values(), default=0),
            "max_per_chat_in_any_second": max(
                (_max_in_window(times, 1.0) for times in by_chat.values()), default=0
            ),
            "group_max_in_window": {
                str(c): _max_in_window(by_chat[c], self.limits.group_window) for c in groups
            },
            "first_at": min(all_times, default=None),
            "last_at": max(all_times, default=None),
        }


def _max_in_window(times: list[float], window: float) -> int:
    """The most events in any half-open window ``(t - window, t]``."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best
