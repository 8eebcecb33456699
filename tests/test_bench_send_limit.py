"""The fair ceiling of benchmark 1 (bench/send_limit.py) counts what our bot counts and
keeps the limit the way our limiter does: a send holds its place from its start until a
window after its answer."""

from __future__ import annotations

import asyncio
import time

from bench.send_limit import COUNTED, OverallSecond
from processing.outbox.direct import SEND_METHODS


def test_counts_the_methods_our_bot_counts() -> None:
    # A copy on purpose (the ceiling must not depend on our code): kept equal here.
    assert COUNTED == SEND_METHODS


async def test_a_send_past_the_limit_waits_a_window_after_the_first_answer() -> None:
    second = OverallSecond(limit=3, window=0.3)
    for _ in range(3):
        await second.take()
    fourth = asyncio.create_task(second.take())
    await asyncio.sleep(0.05)
    assert not fourth.done()  # all three places in flight: no answer freed one yet
    answered = time.monotonic()
    second.settle()
    await asyncio.wait_for(fourth, 2.0)
    assert time.monotonic() - answered >= 0.29  # the answered send held its place


async def test_places_free_as_answers_age() -> None:
    second = OverallSecond(limit=2, window=0.2)
    await second.take()
    second.settle()
    await second.take()
    second.settle()
    started = time.monotonic()
    await second.take()
    second.settle()
    assert 0.15 <= time.monotonic() - started < 1.0
