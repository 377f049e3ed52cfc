"""The daemon (`mailer run`): APScheduler 3.x as the timer, the campaigns table as the truth.

The scheduler keeps only a memory job store: at start, and every second after,
the daemon reads the campaigns table and makes APScheduler's jobs match it (job id
``campaign-<id>``, added with ``replace_existing``), so schedules made, cancelled,
paused or approved from the CLI while it runs take effect, and nothing is lost
across restarts. A campaign whose time passed while no daemon ran is sent if it is
at most ``schedule.late_limit_hours`` late, otherwise marked missed: never sent
silently days late. Campaigns left ``sending`` (a crash, a stop) are resumed.

One daemon per database, enforced by an exclusive lock on ``<database>.lock``.
SIGTERM/SIGINT: stop claiming, let in-flight messages finish, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from . import campaigns, eventloop
from .bounces.poll import Poller
from .clock import SYSTEM_CLOCK, Clock
from .compose import Outbox, file_sha256
from .config import Config
from .errors import (
    CampaignLocked,
    CampaignNotSending,
    IssueError,
    MailerError,
    RelayMisconfigured,
    SendError,
)
from .issue import SUFFIXES
from .locks import exclusive, lock_path
from .logs import LOGGER, event, fields, setup_logging
from .models import Campaign, CampaignStatus
from .send import Database, Run
from .stamps import parse_stamp
from .store import Store

RETRY_SECONDS = 30.0  # after a run failed for a reason that may pass
BUSY_SECONDS = 5.0  # another process is sending the campaign


class DaemonRunning(MailerError):
    """Another daemon holds the database."""


def database_lock(database: Path) -> contextlib.AbstractContextManager[None]:
    """Hold ``<database>.daemon.lock`` for the life of the daemon: one per database."""
    def refuse(holder: str) -> DaemonRunning:
        return DaemonRunning(
            f"another `mailer run` ({holder}) is already running for {database}; "
            "stop it first (one daemon per database)"
        )

    return exclusive(lock_path(database, "daemon"), refuse=refuse)


@dataclass
class _Watched:
    """What the watched folder last saw of one file."""

    stamp: tuple[float, int] = (0.0, 0)
    reported: str = ""  # the sha256 a problem was last logged for


@dataclass
class Daemon:
    config: Config
    # The daemon's decisions (lateness, retry pauses, its poll) and its runs and web
    # app read this clock; APScheduler, the timer, keeps the wall clock's time.
    clock: Clock = SYSTEM_CLOCK
    web: bool = True
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    running: dict[int, tuple[Run, asyncio.Task[None]]] = field(default_factory=dict)
    # Campaigns their timer is starting: sending already, not running yet (a sync
    # meanwhile must not start a second run of them, which would find the lock held).
    starting: set[int] = field(default_factory=set)
    jobs: dict[int, dt.datetime] = field(default_factory=dict)
    retry_after: dict[int, dt.datetime] = field(default_factory=dict)
    watched: dict[Path, _Watched] = field(default_factory=dict)

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (or ``stopping`` is set)."""
        with database_lock(self.config.database):
            self.db = Database(self.config.database, clock=self.clock.now)
            self.bounces = Poller(self.config, clock=self.clock.now)
            self.scheduler = AsyncIOScheduler(timezone=dt.UTC)
            self.scheduler.start()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stopping.set)
            web_task, server = await self._start_web()
            event(logging.INFO, "daemon.started", database=self.config.database,
                  pid=os.getpid())
            try:
                await self.sync()
                event(logging.INFO, "synced", jobs=len(self.scheduler.get_jobs()),
                      sending=len(self.running))
                while not self.stopping.is_set():
                    await self.sync()
                    await self.scan_folder()
                    await self.bounces.tick()
                    await self.clock.wait(self.stopping, self.config.schedule.poll_seconds)
            finally:
                await self._shutdown(web_task, server)
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def _start_web(self) -> tuple[asyncio.Task[None] | None, Any]:
        if not self.web:
            return None, None
        from .web import build_server, serve

        server = build_server(self.config, clock=self.clock, handle_signals=False)
        task = asyncio.create_task(serve(self.config, server=server))
        event(logging.INFO, "web.started", url=f"http://{self.config.web.host}:"
              f"{self.config.web.port}")
        return task, server

    async def _shutdown(self, web_task: asyncio.Task[None] | None, server: Any) -> None:
        event(logging.INFO, "daemon.stopping", running=len(self.running))
        for run, _ in self.running.values():
            run.stop.set()
        await asyncio.gather(*(t for _, t in self.running.values()), return_exceptions=True)
        await self.bounces.close()
        self.scheduler.shutdown(wait=False)
        if web_task is not None:
            server.should_exit = True
            await asyncio.gather(web_task, return_exceptions=True)
        await self.db.close()
        event(logging.INFO, "daemon.stopped")

    # --- making the timer match the table ---------------------------------------

    async def sync(self) -> None:
        now = self.clock.now()
        late_limit = dt.timedelta(seconds=self.config.schedule.late_limit)
        campaigns = await self.db.call(
            Store.campaigns, statuses=[CampaignStatus.PENDING, CampaignStatus.SENDING])
        wanted: dict[int, dt.datetime] = {}
        for c in campaigns:
            if c.status is CampaignStatus.SENDING:
                if c.id not in self.running and c.id not in self.starting \
                        and self.retry_after.get(c.id, now) <= now:
                    await self._start_run(c, resumed=True)
                continue
            when = parse_stamp(c.scheduled_at) if c.scheduled_at else now
            if now - when > late_limit:
                await self._miss(c, now - when)
                continue
            if self.config.schedule.require_approval and not c.approved_by:
                continue
            wanted[c.id] = when
        for cid, when in wanted.items():
            if self.jobs.get(cid) != when:
                # misfire_grace_time=None: a job found late still runs; lateness is
                # judged against late_limit here, from the table, not by the timer.
                self.scheduler.add_job(
                    self._fire, "date", run_date=when, args=[cid], id=f"campaign-{cid}",
                    replace_existing=True, coalesce=True, max_instances=1,
                    misfire_grace_time=None,
                )
                self.jobs[cid] = when
                event(logging.INFO, "scheduled", cid, at=when.isoformat())
        for cid in set(self.jobs) - set(wanted):
            with contextlib.suppress(Exception):
                self.scheduler.remove_job(f"campaign-{cid}")
            del self.jobs[cid]
            event(logging.INFO, "unscheduled", cid)

    async def _miss(self, c: Campaign, late: dt.timedelta) -> None:
        hours = late.total_seconds() / 3600
        await self.db.call(Store.set_campaign_status, c.id, CampaignStatus.MISSED,
                           allowed_from=[CampaignStatus.PENDING],
                           reason=f"{hours:.1f} h late, beyond schedule.late_limit_hours")
        event(logging.WARNING, "missed", c.id, late_hours=f"{hours:.1f}",
              hint="send it by hand with `mailer send FILE` if it should still go")

    async def _fire(self, cid: int) -> None:
        self.jobs.pop(cid, None)
        self.starting.add(cid)
        try:
            await self._start_timed(cid)
        finally:
            self.starting.discard(cid)

    async def _start_timed(self, cid: int) -> None:
        c = await self.db.call(Store.campaign, cid)
        if c.status is not CampaignStatus.PENDING:
            event(logging.INFO, "skipped", cid, status=c.status.value)
            return
        now = self.clock.now()
        when = parse_stamp(c.scheduled_at) if c.scheduled_at else now
        if now - when > dt.timedelta(seconds=self.config.schedule.late_limit):
            await self._miss(c, now - when)
            return
        try:
            outbox = await self._outbox(c)
        except MailerError as e:
            await self._fail(c, str(e))
            return
        n = await self.db.call(Store.start_campaign, cid)
        event(logging.INFO, "started", cid, recipients=n, issue=c.issue_label)
        c = await self.db.call(Store.campaign, cid)
        await self._start_run(c, resumed=False, outbox=outbox)

    async def _fail(self, c: Campaign, reason: str) -> None:
        """A campaign that cannot be prepared (its file gone, changed or broken, no
        signing secret): marked failed with its reason (shown by `mailer log` and
        `schedule list`), never retried in a loop. `mailer resume` takes a started
        one up again once the cause is mended."""
        await self.db.call(Store.set_campaign_status, c.id, CampaignStatus.FAILED,
                           allowed_from=[CampaignStatus.PENDING, CampaignStatus.SENDING],
                           reason=reason)
        event(logging.ERROR, "failed", c.id, error=reason)

    async def _outbox(self, c: Campaign) -> Outbox:
        outbox = await self.db.call(lambda store: campaigns.reopen(self.config, store, c))
        for w in outbox.warnings:
            event(logging.WARNING, "issue", c.id, warning=w)
        return outbox

    async def _start_run(self, c: Campaign, *, resumed: bool, outbox: Outbox | None = None
                         ) -> None:
        try:
            outbox = outbox or await self._outbox(c)
        except MailerError as e:
            await self._fail(c, str(e))
            return
        run = campaigns.sender(self.config, outbox, c.id, wait_for_retries=True)
        run.clock = self.clock
        if resumed:
            event(logging.INFO, "resumed", c.id, issue=c.issue_label)
        self.running[c.id] = (run, asyncio.create_task(self._drive(run)))

    async def _drive(self, run: Run) -> None:
        cid = run.campaign_id
        try:
            p = await run.run()
            event(logging.INFO, "run.ended", cid, sent=p.sent, deferred=p.deferred,
                  failed=p.failed)
        except CampaignLocked as e:
            # `mailer send` has it; look again soon, quietly.
            self.retry_after[cid] = self.clock.now() + dt.timedelta(seconds=BUSY_SECONDS)
            event(logging.INFO, "busy", cid, holder=e.holder)
        except CampaignNotSending as e:
            event(logging.INFO, "skipped", cid, status=e.status)
        except RelayMisconfigured as e:
            self.retry_after[cid] = self.clock.now() + dt.timedelta(seconds=RETRY_SECONDS)
            event(logging.ERROR, "relay_misconfigured", cid, error=str(e),
                  retry_in=f"{RETRY_SECONDS:.0f}s")
        except SendError as e:
            self.retry_after[cid] = self.clock.now() + dt.timedelta(seconds=RETRY_SECONDS)
            event(logging.ERROR, "send_failed", cid, error=str(e),
                  retry_in=f"{RETRY_SECONDS:.0f}s")
        except Exception as e:  # keep the daemon alive; the ledger keeps the campaign
            self.retry_after[cid] = self.clock.now() + dt.timedelta(seconds=RETRY_SECONDS)
            LOGGER.error(fields("crashed", cid, error=str(e)), exc_info=True)
        finally:
            if self.running.get(cid, (None, None))[0] is run:  # its own entry only
                del self.running[cid]
            c = await self.db.call(Store.campaign, cid)
            if c.status is CampaignStatus.SENT:
                event(logging.INFO, "finished", cid, **{k: v for k, v in c.counts.items()})

    # --- the watched folder ------------------------------------------------------

    async def scan_folder(self) -> None:
        folder = self.config.schedule.issues_dir
        if folder is None or not folder.is_dir():
            return
        for path in sorted(folder.iterdir()):
            # Dot files are hidden; "~$…" is the lock file Word keeps beside an open
            # document, not an issue.
            if path.suffix.lower() not in SUFFIXES or path.name.startswith((".", "~$")):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            seen = self.watched.setdefault(path, _Watched())
            stamp = (st.st_mtime, st.st_size)
            if stamp == seen.stamp:
                continue
            seen.stamp = stamp
            await self._consider(path.resolve(), seen)

    async def _consider(self, path: Path, seen: _Watched) -> None:
        """A new or changed file: refused with the same message as `mailer send`
        would give, or scheduled (rescheduled) by its ``send_at``."""
        def apply(store: Store) -> str:
            prepared = campaigns.prepare(self.config, store, path)
            if prepared.outbox.issue.send_at is None:
                return "ignored: no send_at"
            for w in prepared.warnings:
                event(logging.WARNING, "issue", file=path.name, warning=w)
            return campaigns.schedule_file(self.config, store, prepared, now=self.clock.now())

        name = "issue.not_scheduled"
        try:
            outcome = await self.db.call(apply)
        except OSError as e:
            name, outcome = "issue.unreadable", f"refused: {e.strerror}"
        except IssueError as e:
            name, outcome = "issue.rejected", f"refused: {e}"
        except MailerError as e:
            outcome = f"refused: {e}"
        if outcome.startswith("ignored"):
            return
        if outcome.startswith("refused"):
            try:
                sha = file_sha256(path)
            except OSError:
                sha = ""
            if seen.reported != sha or not sha:
                seen.reported = sha
                event(logging.ERROR if name != "issue.not_scheduled" else logging.WARNING,
                      name, file=path.name, why=outcome.removeprefix("refused: "))
        else:
            event(logging.INFO, "issue." + outcome.split(" ")[0], file=path.name,
                  detail=outcome)


def run_daemon(config: Config) -> None:
    """What `mailer run` does: run until a signal, then exit 0."""
    setup_logging()
    eventloop.run(Daemon(config).run())
