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
import fcntl
import logging
import os
import signal
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from .compose import Outbox, campaign_outbox, file_sha256, record_issue
from .config import Config
from .errors import AlreadySent, IssueError, MailerError, SendError
from .issue import parse_file
from .models import Campaign, CampaignStatus, Issue
from .send import Database, Run, run_for
from .stamps import parse_stamp
from .store import Store
from .store.base import utc_now

log = logging.getLogger("mailer")
POLL_SECONDS = 1.0
RETRY_SECONDS = 30.0  # after a run failed to reach the relay
ISSUE_SUFFIXES = (".txt", ".md")


class DaemonRunning(MailerError):
    """Another daemon holds the database."""


def event(level: int, event_name: str, campaign: int | None = None, **fields: Any) -> None:
    """One log line: time, level, campaign, event, then key=value details."""
    parts = [f"campaign={campaign}" if campaign is not None else "campaign=-",
             f"event={event_name}"]
    parts += [f"{k}={v}" for k, v in fields.items() if v is not None]
    log.log(level, " ".join(parts))


def setup_logging() -> None:
    """Plain lines on stderr, as journald wants them."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")
    # APScheduler narrates every job at INFO; our own lines say what matters.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


@contextlib.contextmanager
def database_lock(database: Path) -> Iterator[IO[str]]:
    """Hold ``<database>.lock`` exclusively for the life of the daemon."""
    path = database.with_name(database.name + ".lock")
    f = open(path, "a+")  # noqa: SIM115 - held open while the daemon lives
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            raise DaemonRunning(
                f"another `mailer run` (pid {pid}) is already running for {database}; "
                "stop it first (one daemon per database)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield f
    finally:
        f.close()


def local_time(value: dt.datetime, timezone: str) -> dt.datetime:
    """A naive time is in the configured time zone."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=zoneinfo.ZoneInfo(timezone))
    return value.astimezone(dt.UTC)


@dataclass
class _Watched:
    """What the watched folder last saw of one file."""

    stamp: tuple[float, int] = (0.0, 0)
    reported: str = ""  # the sha256 a problem was last logged for


@dataclass
class Daemon:
    config: Config
    clock: Callable[[], dt.datetime] = utc_now
    web: bool = True
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    running: dict[int, tuple[Run, asyncio.Task[None]]] = field(default_factory=dict)
    jobs: dict[int, dt.datetime] = field(default_factory=dict)
    retry_after: dict[int, dt.datetime] = field(default_factory=dict)
    watched: dict[Path, _Watched] = field(default_factory=dict)

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (or ``stopping`` is set)."""
        with database_lock(self.config.database):
            self.db = Database(self.config.database, clock=self.clock)
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
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), POLL_SECONDS)
            finally:
                await self._shutdown(web_task, server)
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def _start_web(self) -> tuple[asyncio.Task[None] | None, Any]:
        if not self.web:
            return None, None
        from .web import build_server, serve

        server = build_server(self.config, handle_signals=False)
        task = asyncio.create_task(serve(self.config, server=server))
        event(logging.INFO, "web.started", url=f"http://{self.config.web.host}:"
              f"{self.config.web.port}")
        return task, server

    async def _shutdown(self, web_task: asyncio.Task[None] | None, server: Any) -> None:
        event(logging.INFO, "daemon.stopping", running=len(self.running))
        for run, _ in self.running.values():
            run.stop.set()
        await asyncio.gather(*(t for _, t in self.running.values()), return_exceptions=True)
        self.scheduler.shutdown(wait=False)
        if web_task is not None:
            server.should_exit = True
            await asyncio.gather(web_task, return_exceptions=True)
        await self.db.close()
        event(logging.INFO, "daemon.stopped")

    # --- making the timer match the table ---------------------------------------

    async def sync(self) -> None:
        now = self.clock()
        late_limit = dt.timedelta(seconds=self.config.schedule.late_limit)
        campaigns = await self.db.call(
            Store.campaigns, statuses=[CampaignStatus.PENDING, CampaignStatus.SENDING])
        wanted: dict[int, dt.datetime] = {}
        for c in campaigns:
            if c.status is CampaignStatus.SENDING:
                if c.id not in self.running and self.retry_after.get(c.id, now) <= now:
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
        c = await self.db.call(Store.campaign, cid)
        if c.status is not CampaignStatus.PENDING:
            event(logging.INFO, "skipped", cid, status=c.status.value)
            return
        when = parse_stamp(c.scheduled_at) if c.scheduled_at else self.clock()
        if self.clock() - when > dt.timedelta(seconds=self.config.schedule.late_limit):
            await self._miss(c, self.clock() - when)
            return
        try:
            outbox = await self._outbox(c)
        except MailerError as e:
            event(logging.ERROR, "not_started", cid, error=str(e))
            return
        n = await self.db.call(Store.start_campaign, cid)
        event(logging.INFO, "started", cid, recipients=n, issue=c.issue_label)
        c = await self.db.call(Store.campaign, cid)
        await self._start_run(c, resumed=False, outbox=outbox)

    async def _outbox(self, c: Campaign) -> Outbox:
        def build(store: Store) -> Outbox:
            return campaign_outbox(self.config, store, c,
                                   warn=lambda w: event(logging.WARNING, "issue", c.id,
                                                        warning=w))

        return await self.db.call(build)

    async def _start_run(self, c: Campaign, *, resumed: bool, outbox: Outbox | None = None
                         ) -> None:
        try:
            outbox = outbox or await self._outbox(c)
        except MailerError as e:
            self.retry_after[c.id] = self.clock() + dt.timedelta(seconds=RETRY_SECONDS)
            event(logging.ERROR, "not_resumed", c.id, error=str(e))
            return
        run = run_for(self.config, outbox, c.id, wait_for_retries=True)
        if resumed:
            event(logging.INFO, "resumed", c.id, issue=c.issue_label)
        self.running[c.id] = (run, asyncio.create_task(self._drive(run)))

    async def _drive(self, run: Run) -> None:
        cid = run.campaign_id
        try:
            p = await run.run()
            event(logging.INFO, "run.ended", cid, sent=p.sent, deferred=p.deferred,
                  failed=p.failed)
        except SendError as e:
            self.retry_after[cid] = self.clock() + dt.timedelta(seconds=RETRY_SECONDS)
            event(logging.ERROR, "send_failed", cid, error=str(e),
                  retry_in=f"{RETRY_SECONDS:.0f}s")
        except Exception as e:  # keep the daemon alive; the ledger keeps the campaign
            self.retry_after[cid] = self.clock() + dt.timedelta(seconds=RETRY_SECONDS)
            log.exception("campaign=%s event=crashed error=%s", cid, e)
        finally:
            self.running.pop(cid, None)
            c = await self.db.call(Store.campaign, cid)
            if c.status is CampaignStatus.SENT:
                event(logging.INFO, "finished", cid, **{k: v for k, v in c.counts.items()})

    # --- the watched folder ------------------------------------------------------

    async def scan_folder(self) -> None:
        folder = self.config.schedule.issues_dir
        if folder is None or not folder.is_dir():
            return
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in ISSUE_SUFFIXES or path.name.startswith("."):
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
        try:
            sha = file_sha256(path)
            result = parse_file(path)
        except (OSError, IssueError) as e:
            event(logging.ERROR, "issue.unreadable", file=path.name, error=str(e))
            return
        errors = result.errors
        if errors:
            if seen.reported != sha:
                seen.reported = sha
                for p in errors:
                    event(logging.ERROR, "issue.rejected", file=path.name, problem=str(p))
            return
        issue = result.issue
        if issue.send_at is None:
            return
        when = local_time(issue.send_at, self.config.schedule.timezone)

        def apply(store: Store) -> str:
            return _schedule_file(store, issue, path, sha, when, self.clock())

        try:
            outcome = await self.db.call(apply)
        except (MailerError, AlreadySent) as e:
            outcome = f"refused: {e}"
        if outcome.startswith(("refused", "ignored")):
            if seen.reported != sha:
                seen.reported = sha
                event(logging.WARNING, "issue.not_scheduled", file=path.name, why=outcome)
        else:
            event(logging.INFO, "issue." + outcome.split(" ")[0], file=path.name,
                  detail=outcome)


def _schedule_file(store: Store, issue: Issue, path: Path, sha: str, when: dt.datetime,
                   now: dt.datetime) -> str:
    """What the watched folder does with a changed file; returns what happened."""
    c = store.campaign_for_source(str(path))
    if c is not None and c.source_sha256 == sha:
        return "ignored: unchanged"
    if c is not None and c.status is CampaignStatus.PENDING:
        store.reschedule(c.id, when, sha256=sha, source_path=str(path))
        return f"rescheduled campaign {c.id} for {when.isoformat()}"
    if c is not None and c.status in (CampaignStatus.SENDING, CampaignStatus.SENT,
                                      CampaignStatus.PAUSED):
        return (f"refused: campaign {c.id} is already {c.status.value}; an edit after "
                "sending is not sent (use `mailer send FILE --again` if it must go again)")
    if when <= now:
        return f"refused: send_at {when.isoformat()} is in the past"
    lists = tuple(ml.slug for ml in store.lists())
    issue_id = record_issue(store, issue, sha)
    cid = store.create_campaign(issue_id, lists, source_path=str(path), sha256=sha,
                                scheduled_at=when, again=c is not None)
    return f"scheduled campaign {cid} for {when.isoformat()}"


def run_daemon(config: Config) -> None:
    """What `mailer run` does: run until a signal, then exit 0."""
    setup_logging()
    asyncio.run(Daemon(config).run())
