"""Which payment providers are cooling down after repeated failures (issue 12).

A provider whose invoice creation fails ``threshold`` times in a row is skipped for
``cooldown`` seconds, so buyers stop waiting through its timeouts before the fallback
answers; after that it is tried again, and one success clears it. When every provider
that takes an asset is cooling down, they are tried anyway: a slow invoice beats none.

Kept in memory, per process: each replica learns of an outage from its own attempts
(a few extra tries per replica, no shared state to go stale). /balance shows this
process's view.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass
class _Record:
    failures: int = 0  # in a row
    cooling_until: float = 0.0  # monotonic
    last_error: str | None = None


@dataclass(frozen=True)
class ProviderState:
    name: str
    failures: int
    cooling_until: datetime | None  # None: in use
    last_error: str | None


class ProviderHealth:
    def __init__(
        self,
        *,
        threshold: int = 3,
        cooldown: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._records: dict[str, _Record] = {}

    def cooling(self, name: str) -> bool:
        record = self._records.get(name)
        return record is not None and record.cooling_until > self._clock()

    def failed(self, name: str, error: str) -> bool:
        """Count a failure; True when it starts a cool-down (worth telling the admins)."""
        record = self._records.setdefault(name, _Record())
        record.failures += 1
        record.last_error = error[:300]
        if record.failures >= self.threshold and not self.cooling(name):
            record.cooling_until = self._clock() + self.cooldown
            return True
        return False

    def succeeded(self, name: str) -> None:
        self._records[name] = _Record()

    def states(self, names: list[str]) -> list[ProviderState]:
        now_mono, now = self._clock(), datetime.now(UTC)
        states = []
        for name in names:
            record = self._records.get(name, _Record())
            until = None
            if record.cooling_until > now_mono:
                until = now + timedelta(seconds=record.cooling_until - now_mono)
            states.append(ProviderState(name, record.failures, until, record.last_error))
        return states
