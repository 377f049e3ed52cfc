"""The one clock: everything in mailer that reads the time or waits for it goes here.

The engine (retry backoff, quotas, the rate limit, a relay's pause), the daemon (its
poll of the campaigns table, its retry pauses) and the web app (key expiry, the
failed-check limiter) take a ``Clock``. ``SystemClock`` is the real one.
``ManualClock`` is time that moves only when it is slept on or moved by hand, so a
test of a day's quota or an hour's backoff drives it instead of waiting: a sleep on
it returns at once, having moved the clock on by what was asked.

What a clock does not cover: waits for I/O (a reply from the relay, replies still
in flight, a socket timeout) take the time they take, and APScheduler, the
daemon's timer, keeps its own wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from typing import Protocol


def utc_now() -> dt.datetime:
    """The wall-clock time, timezone-aware in UTC (what the store records)."""
    return dt.datetime.now(dt.UTC)


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """Wall-clock time, aware, in UTC: for what is stored and compared with stored
        times (next attempts, quotas, schedules, key expiry)."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go back: for intervals (the rate limit, rates shown)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait ``seconds`` or until ``event`` is set, whichever comes first; whether
        it is set."""
        ...


class SystemClock:
    """The machine's clocks and asyncio's timers."""

    def now(self) -> dt.datetime:
        return utc_now()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(seconds, 0.0))
        return event.is_set()


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """Time that moves only by ``advance``, ``set`` or a sleep on it.

    A sleep moves the clock on by what was asked and returns after one turn of the
    event loop (so other tasks and I/O get their turn); ``slept`` lists every sleep
    asked for, in order. Both ``now`` and ``monotonic`` move together. Meant for
    tests and simulations: several tasks sleeping at once each move the clock by
    their own sleep, one after the other."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        start = start or dt.datetime(2015, 11, 24, 1, 0, tzinfo=dt.UTC)
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware start time")
        self._now = start.astimezone(dt.UTC)
        self._monotonic = 0.0
        self.slept: list[float] = []

    def now(self) -> dt.datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back")
        self._now += dt.timedelta(seconds=seconds)
        self._monotonic += seconds

    def set(self, when: dt.datetime) -> None:
        """Set the wall clock to ``when``, earlier or later, as an administrator (or
        NTP) may; monotonic time does not move."""
        if when.tzinfo is None:
            raise ValueError("ManualClock needs an aware time")
        self._now = when.astimezone(dt.UTC)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        if not event.is_set():
            await self.sleep(seconds)
        return event.is_set()


__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock", "utc_now"]
