"""The daemon's bounce polling: one mailbox pass every ``bounces.poll_minutes``.

A pass runs on a worker thread (imapclient is blocking) with its own store
handle, never two at once; a mailbox that is down is logged and tried again at
the next interval, and never stops the daemon's sending.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from ..config import Config
from ..errors import MailerError
from ..logs import LOGGER, event, fields
from .intake import fetch_pass


class Poller:
    """Call ``tick()`` from the daemon's loop; ``close()`` at shutdown."""

    def __init__(self, config: Config, *, clock: Callable[[], dt.datetime]) -> None:
        self.config = config
        self.clock = clock
        self.next_at: dt.datetime | None = None
        self.task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        b = self.config.bounces
        if b is None or b.poll_minutes <= 0 or (self.task is not None and not self.task.done()):
            return
        now = self.clock()
        if self.next_at is not None and now < self.next_at:
            return
        self.next_at = now + dt.timedelta(minutes=b.poll_minutes)
        self.task = asyncio.create_task(self._pass())

    async def _pass(self) -> None:
        try:
            report = await asyncio.to_thread(fetch_pass, self.config, clock=self.clock)
        except MailerError as e:
            event(logging.ERROR, "bounces.failed", error=str(e),
                  retry_at=self.next_at.isoformat() if self.next_at else None)
            return
        except Exception as e:  # keep the daemon alive; the next interval tries again
            LOGGER.error(fields("bounces.crashed", error=str(e)), exc_info=True)
            return
        event(logging.INFO, "bounces.fetched", read=report.read,
              unreadable_waiting=report.unreadable_waiting,
              **{k.replace(" ", "_"): v for k, v in sorted(report.counts.items())})

    async def close(self) -> None:
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
