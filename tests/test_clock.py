"""The one clock: the real one, and the manual one the timing tests drive."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from mailer.clock import SYSTEM_CLOCK, ManualClock
from mailer.send import Progress, RateLimiter

START = dt.datetime(2015, 11, 24, 1, 0, tzinfo=dt.UTC)


def test_manual_clock_moves_only_when_slept_on_or_moved() -> None:
    clock = ManualClock(START)
    assert (clock.now(), clock.monotonic()) == (START, 0.0)
    asyncio.run(clock.sleep(90))
    assert clock.now() == START + dt.timedelta(seconds=90) and clock.monotonic() == 90
    clock.advance(10)
    assert clock.now() == START + dt.timedelta(seconds=100) and clock.slept == [90]
    # The wall clock may be set back (an administrator, NTP); monotonic time is not.
    clock.set(START)
    assert clock.now() == START and clock.monotonic() == 100
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        ManualClock(dt.datetime(2015, 11, 24))


def test_a_wait_ends_early_when_its_event_is_set() -> None:
    async def go() -> tuple[bool, bool, float]:
        manual = ManualClock(START)
        stop = asyncio.Event()
        unset = await manual.wait(stop, 3600)
        stop.set()
        already = await manual.wait(stop, 3600)
        # The real clock: set from another task long before the hour is up.
        real = asyncio.Event()
        asyncio.get_running_loop().call_soon(real.set)
        assert await asyncio.wait_for(SYSTEM_CLOCK.wait(real, 3600), 30)
        return unset, already, manual.monotonic()

    assert asyncio.run(go()) == (False, True, 3600)


def test_rate_limiter_spaces_concurrent_senders_on_the_clock() -> None:
    """Four senders sharing a 10/s limit: 20 messages take 1.9 s of the clock's time
    (one every 0.1 s over all of them, not per sender), each wait a tenth."""
    clock = ManualClock(START)
    limiter = RateLimiter(10.0, clock=clock)
    released: list[int] = []

    async def sender(n: int) -> None:
        for _ in range(5):
            await limiter.wait()
            released.append(n)

    async def go() -> None:
        await asyncio.gather(*(sender(n) for n in range(4)))

    asyncio.run(go())
    assert len(released) == 20 and set(released) == {0, 1, 2, 3}
    assert clock.slept == pytest.approx([0.1] * 19)
    assert clock.monotonic() == pytest.approx(1.9)


def test_progress_rate_is_on_the_runs_clock() -> None:
    clock = ManualClock(START)
    p = Progress(clock=clock)
    p.sent = 30
    clock.advance(10)
    assert p.rate == pytest.approx(3.0)
