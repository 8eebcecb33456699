"""Outbox sender: delivers queued messages at least once, in order per chat, within
Telegram's limits.

Rows are claimed with a short lease (compare-and-set), sent, then marked sent. A crash
after sending but before marking re-sends (at-least-once); a crash before sending
loses nothing. A graceful ``stop()`` lets in-flight sends finish and releases the rest,
so a restart re-sends nothing.

Telegram's limits (SPEC §6): about 30 messages/s overall, about 1/s per chat with short
bursts, 20/min per group. The sender keeps them exactly (``limits``' docstring says why
that is safe):

- overall: never more than ``global_per_second`` (30) sends started-or-answered within
  one second, and at least ``0.5/global_per_second`` between send starts (smoothing);
- per chat: a token bucket (``per_chat_burst`` 3, refilled ``per_chat_per_second`` 1/s);
- per group (negative chat id): at most ``group_limit`` (20) per ``group_window`` (60 s).

Windows and buckets are charged at the *end* of a send (the answer came back), which is
never earlier than the moment Telegram saw it: so loopback jitter or a stalled event loop
cannot squeeze two sends into one of Telegram's windows. Chats are sent to concurrently
(``concurrency`` requests in flight at most), but each chat's rows go one after another.

Every Telegram error ends somewhere defined (``outcomes``), never left pending.
Limits are per process: two replicas sharing a bot token should halve them.

Modules: ``limits`` (the rate limiter), ``sender`` (claiming and the send loop),
``outcomes`` (Telegram's answers), ``delivery`` (a row into messages), ``coalesce``
(joining admin-group messages), ``progress`` (the broadcast's progress message).
"""

from processing.outbox.coalesce import COALESCE_CHARS, COALESCE_MAX
from processing.outbox.limits import RateLimiter, SendLimits
from processing.outbox.outcomes import MAX_ATTEMPTS
from processing.outbox.progress import BroadcastProgress
from processing.outbox.sender import CLAIM_LEASE, OutboxSender

__all__ = [
    "CLAIM_LEASE",
    "COALESCE_CHARS",
    "COALESCE_MAX",
    "MAX_ATTEMPTS",
    "BroadcastProgress",
    "OutboxSender",
    "RateLimiter",
    "SendLimits",
]
