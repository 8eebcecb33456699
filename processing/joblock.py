"""One replica at a time per scheduled job (issue 13 item 6), through Redis.

Every replica runs the same scheduler; before a run, the job claims its name in Redis for
``hold`` seconds (``SET NX PX``). The claim is not released when the run ends: held for
most of the job's interval, it makes "each job once per interval" true across replicas
instead of once per replica. A replica that dies holding a claim loses it when ``hold``
runs out, and the next tick anywhere takes the job over.

A run longer than its hold may overlap the next replica's run; every job works from the
database by compare-and-set (processing/scheduler.py), so an overlap repeats no effect.
Without Redis there is no lock: one replica is the supported set-up (start-up warns).
Redis unreachable: the job runs anyway (each replica may then run it; again harmless),
with a WARNING, rather than stopping payments polling and deliveries with it.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


class JobLock:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        # Who holds a claim, for whoever reads Redis while debugging.
        self.holder = f"{socket.gethostname()}:{os.getpid()}"

    async def claim(self, job: str, hold: float) -> bool:
        """True: this replica runs ``job`` now; False: another one has it this interval."""
        try:
            won = await self.redis.set(
                f"{self.prefix}job:{job}", self.holder, nx=True, px=max(1, int(hold * 1000))
            )
        except Exception as exc:
            log.warning("job_lock_unavailable job=%s error=%s: running it", job, type(exc).__name__)
            return True
        if not won:
            log.debug("job_skipped job=%s reason=held_by_another_replica", job)
        return bool(won)


def hold_for(interval: float | None) -> float:
    """How long a run's claim lasts: most of an interval job's interval (so the next tick,
    on any replica, finds it free), five minutes for clock-time and one-off jobs (their
    own dedupe keys make a second run a no-op anyway)."""
    if interval is None:
        return 300.0
    return max(0.5, interval * 0.8)
