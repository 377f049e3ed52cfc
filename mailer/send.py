"""The sending engine: a pool of SMTP connections fed from the campaign ledger.

Guarantees, and how they are kept:

* **Nothing missed.** Work comes only from the ledger (``Store.claim``); a row is
  ``sent`` only in the committed transaction that records the server's 2xx to
  DATA. Rows claimed but not recorded go back to pending when a sender takes the
  campaign over after a crash.
* **Duplicates bounded by the connections.** A connection does not start its next
  message until the reply to its last one is committed, so a ``kill -9`` can leave
  at most one accepted-but-unrecorded message per connection. A resent duplicate
  carries the same Message-ID (it depends only on campaign and recipient).
* **Fast.** SQLite calls run on one database thread, off the event loop. Replies
  are group-committed: while one transaction commits, the next replies queue up,
  so 16 connections cost about one commit per round, not sixteen. Messages are
  joined from bytes prepared once per (issue, list) (``mailer.message``) and sent
  pipelined (``mailer.transport``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from .clock import SYSTEM_CLOCK, Clock
from .config import Config
from .errors import CampaignLocked, RelayUnavailable, SenderRefused
from .locks import exclusive, holder_description, lock_path
from .message import PreparedMessage, make_message_id
from .models import DeliveryStatus
from .stamps import parse_stamp
from .store import DeliveryResult, Job, Now, Store
from .transport import Envelope, Outcome, Reply, Transport

T = TypeVar("T")
P = ParamSpec("P")
# Consecutive failures to open a session (refused, timed out, 421 at greeting or
# EHLO) after which the relay counts as down: the run stops walking the campaign
# (each recipient would cost a timeout) and backs off instead.
RELAY_TROUBLE_LIMIT = 3
# How often a wait for I/O (replies in flight) looks again. Such waits take real
# time whatever the run's clock: nothing is due later, something is on the wire.
IO_POLL_S = 0.02


@dataclass(frozen=True)
class Policy:
    """How a run paces itself; from the config's [smtp], [sending] and [retry]."""

    concurrency: int = 4
    messages_per_connection: int = 0
    rate: float = 0.0  # messages/second over all connections; 0: unlimited
    per_hour: int = 0
    per_day: int = 0
    first_retry: float = 60.0
    max_retry: float = 3600.0
    lifetime: float = 86400.0

    @classmethod
    def from_config(cls, config: Config) -> Policy:
        s, smtp = config.sending, config.smtp
        return cls(
            concurrency=smtp.concurrency, messages_per_connection=smtp.messages_per_connection,
            rate=smtp.rate_limit, per_hour=s.per_hour, per_day=s.per_day,
            first_retry=s.first_retry, max_retry=s.max_retry, lifetime=s.lifetime,
        )

    def retry_delay(self, attempts: int) -> float:
        return float(min(self.first_retry * 2 ** max(attempts - 1, 0), self.max_retry))


@dataclass
class Progress:
    """Counts for this run, updated as replies are recorded."""

    total: int = 0  # deliveries still to do when the run started
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    waiting_until: dt.datetime | None = None  # quota pause
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False, compare=False)
    started: float = -1.0  # the clock's monotonic time at the start; set by __post_init__

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.clock.monotonic()

    @property
    def done(self) -> int:
        return self.sent + self.failed

    @property
    def rate(self) -> float:
        elapsed = self.clock.monotonic() - self.started
        return self.sent / elapsed if elapsed > 0 else 0.0


class Database:
    """The store on one dedicated thread: sqlite3 objects stay on the thread that
    made them, and the event loop never waits on disk."""

    def __init__(self, path: Path, *, clock: Now) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mailer-db")
        self._store: Store | None = None
        self._path = path
        self._clock = clock

    async def call(self, fn: Callable[Concatenate[Store, P], T], /, *args: P.args,
                   **kwargs: P.kwargs) -> T:
        """``fn(store, *args, **kwargs)`` on the database thread."""

        def run() -> T:
            if self._store is None:
                self._store = Store.open(self._path, clock=self._clock)
            return fn(self._store, *args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self._pool, run)

    async def close(self) -> None:
        def close() -> None:
            if self._store is not None:
                self._store.close()

        await asyncio.get_running_loop().run_in_executor(self._pool, close)
        self._pool.shutdown(wait=True)


class Recorder:
    """Group commit: results wait in a batch while the previous batch commits."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._batch: list[tuple[DeliveryResult, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run())
        self._closing = False

    async def record(self, result: DeliveryResult) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batch.append((result, fut))
        self._wake.set()
        await fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._batch = self._batch, []
            if batch:
                try:
                    await self._db.call(Store.record_results, [r for r, _ in batch])
                except BaseException as e:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    if not isinstance(e, Exception):
                        raise
                    continue
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
            elif self._closing:
                return

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        await self._task


class RateLimiter:
    """Spaces messages evenly at ``rate`` per second across all connections."""

    def __init__(self, rate: float, *, clock: Clock) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._clock = clock

    async def wait(self) -> None:
        if not self._interval:
            return
        now = self._clock.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await self._clock.sleep(slot - now)


MessageSource = Callable[[str, bool], PreparedMessage]  # (list slug, eight_bit) -> message
UrlSource = Callable[[str, str], str | None]  # (recipient uid, list slug) -> unsubscribe URL


@dataclass
class Run:
    """Everything one sending run needs; ``run()`` sends until nothing is due.

    The run holds the campaign's kernel lock (``mailer.locks``) for its whole life,
    whoever starts it (`mailer send`, the daemon): a second sender is refused at
    once, and a crashed one's lock is gone the moment it dies."""

    database: Path
    campaign_id: int
    messages: MessageSource
    unsubscribe_url: UrlSource
    connect: Callable[[], Transport]
    sender: str
    msgid_domain: str
    policy: Policy = field(default_factory=Policy)
    clock: Clock = SYSTEM_CLOCK  # retries, quotas, pauses and the rate limit
    # (uid, list slug) -> the recipient's web-edition URL, when the bulletin links one.
    web_edition_url: UrlSource | None = None
    limit: int | None = None  # send at most this many messages in this run
    wait_for_retries: bool = False  # keep running until deferred rows are due
    on_progress: Callable[[Progress], None] = lambda p: None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    owner: str = field(default_factory=lambda: f"{holder_description()} "
                                               f"run {secrets.token_hex(4)}")
    # Each delivery's own envelope sender (VERP, mailer.bounces.verp); None: ``sender``.
    sender_for: Callable[[Job], str] | None = None
    # (job, msgid domain) -> the delivery's Message-ID, when it is signed (bounces).
    message_id_for: Callable[[Job, str], str] | None = None

    progress: Progress = field(default_factory=Progress)
    _claimed: int = 0
    _in_flight: int = 0
    _trouble: int = 0  # consecutive session failures
    _down: Reply | None = None  # the relay counts as down; the last failure

    async def run(self) -> Progress:
        """Send the campaign's due deliveries. Raises ``CampaignLocked`` when another
        process sends it, ``RelayMisconfigured`` when the relay cannot be used as
        configured, ``RelayUnavailable`` when it is down (after backing off, with
        ``wait_for_retries``, until ``stop``), ``SenderRefused``; the campaign then
        stays resumable."""
        lock = lock_path(self.database, f"campaign-{self.campaign_id}")
        with exclusive(lock, refuse=lambda holder: CampaignLocked(self.campaign_id, holder)):
            db = Database(self.database, clock=self.clock.now)
            try:
                await db.call(Store.take_over, self.campaign_id, self.owner)
                try:
                    return await self._run(db)
                finally:
                    await db.call(Store.finish_if_done, self.campaign_id)
                    await db.call(Store.release, self.campaign_id, self.owner)
            finally:
                await db.close()

    async def _run(self, db: Database) -> Progress:
        self.progress.clock, self.progress.started = self.clock, self.clock.monotonic()
        c = await db.call(Store.campaign, self.campaign_id)
        self.progress.total = sum(c.counts.get(s.value, 0) for s in
                                  (DeliveryStatus.PENDING, DeliveryStatus.DEFERRED,
                                   DeliveryStatus.SENDING))
        pauses = 0
        while True:
            await self._pass(db)
            down, self._down, self._trouble = self._down, None, 0
            if down is None or self.stop.is_set():
                return self.progress
            reason = f"{down.code} {down.text}" if down.code else down.text
            if not self.wait_for_retries:
                host, port = self.connect().relay
                raise RelayUnavailable(host, port, reason, campaign_id=self.campaign_id)
            pauses += 1
            delay = self.policy.retry_delay(pauses)
            self.progress.waiting_until = self.clock.now() + dt.timedelta(seconds=delay)
            self.on_progress(self.progress)
            await self._sleep_or_stop(delay)
            self.progress.waiting_until = None
            if self.stop.is_set():
                return self.progress

    async def _pass(self, db: Database) -> None:
        """Send over fresh connections until nothing is due, ``stop``, or the relay is
        down (``self._down``)."""
        first = self.connect()
        try:
            await first.connect()
        except (ConnectionError, OSError, TimeoutError) as e:
            self._down = Reply(0, str(e) or type(e).__name__, Outcome.DEFERRED, "connect")
            return
        transports = [first] + [self.connect() for _ in range(self.policy.concurrency - 1)]
        queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=self.policy.concurrency * 2)
        recorder = Recorder(db)
        limiter = RateLimiter(self.policy.rate, clock=self.clock)
        abort: list[BaseException] = []
        workers = [
            asyncio.create_task(self._worker(t, queue, recorder, limiter, abort, db))
            for t in transports
        ]
        try:
            await self._feed(db, queue, workers)
            # A normal end (or --limit): let what is queued go out.
            while self._in_flight and not self.stop.is_set() and self._down is None \
                    and not all(w.done() for w in workers):
                await asyncio.sleep(0.01)
        finally:
            # Stopping: claimed but not yet sent goes back to pending, then each
            # worker finishes the message it has in hand and takes its None.
            left = _drain(queue)
            for _ in workers:
                queue.put_nowait(None)  # just drained; it holds 2x the workers
            await asyncio.gather(*workers, return_exceptions=True)
            await recorder.close()
            left += _drain(queue)
            if left:
                self._in_flight -= len(left)
                await db.call(Store.unclaim, [j.delivery_id for j in left])
            await asyncio.gather(*(t.close() for t in transports), return_exceptions=True)
        if abort:
            raise abort[0]

    async def _feed(self, db: Database, queue: asyncio.Queue[Job | None],
                    workers: list[asyncio.Task[None]]) -> None:
        batch = max(self.policy.concurrency * 2, 8)
        while not self.stop.is_set() and self._down is None and not all(
                w.done() for w in workers):
            if self.limit is not None and self._claimed >= self.limit:
                return
            room = await self._quota_room(db)
            if room is None:
                continue  # waited for the quota window; look again
            want = min(batch, room - self._in_flight)
            if self.limit is not None:
                want = min(want, self.limit - self._claimed)
            if want <= 0:  # the quota's room is in flight: wait for replies
                await self._io_poll()
                continue
            jobs = await db.call(Store.claim, self.campaign_id, self.owner, want,
                                 self.clock.now())
            if jobs is None:
                # Paused or cancelled: what is queued goes back, in flight finishes.
                self.stop.set()
                return
            if not jobs:
                if not await self._more_to_come(db):
                    return
                continue
            self._claimed += len(jobs)
            self._in_flight += len(jobs)
            for i, job in enumerate(jobs):
                if not await _put_unless_dead(queue, job, workers):
                    # Every worker has stopped: give back what nobody will send.
                    self._in_flight -= len(jobs) - i
                    await db.call(Store.unclaim, [j.delivery_id for j in jobs[i:]])
                    return

    async def _more_to_come(self, db: Database) -> bool:
        """Nothing was due: wait for replies in flight, then for the next retry."""
        while self._in_flight and not self.stop.is_set() and self._down is None:
            await self._io_poll()
        c = await db.call(Store.campaign, self.campaign_id)
        if c.status.value != "sending" or self.stop.is_set() or self._down is not None:
            return False
        due = await db.call(Store.next_attempt_at, self.campaign_id)
        if due is None:
            return False  # nothing pending or deferred: done
        if due == "":
            return True  # pending rows appeared (a claim raced an unclaim): go on
        if not self.wait_for_retries:
            return False
        when = parse_stamp(due)
        await self._sleep_or_stop(max((when - self.clock.now()).total_seconds(), 0.0) + 0.01)
        return True

    async def _quota_room(self, db: Database) -> int | None:
        """How many more messages the hourly/daily quotas allow now; at the quota,
        wait (recorded on the campaign for `mailer log`) and return None."""
        room = 1 << 30
        now = self.clock.now()
        for limit, window in ((self.policy.per_hour, dt.timedelta(hours=1)),
                              (self.policy.per_day, dt.timedelta(days=1))):
            if not limit:
                continue
            used = await db.call(Store.sent_since, now - window)
            if used + self._in_flight < limit:
                room = min(room, limit - used)
                continue
            while self._in_flight and not self.stop.is_set():
                await self._io_poll()
            oldest = await db.call(Store.oldest_sent_since, now - window)
            start = parse_stamp(oldest) if oldest else now
            resume = start + window + dt.timedelta(seconds=1)
            self.progress.waiting_until = resume
            self.on_progress(self.progress)
            await db.call(Store.set_resume_at, self.campaign_id, resume)
            while self.clock.now() < resume and not self.stop.is_set():
                await self._sleep_or_stop(min((resume - self.clock.now()).total_seconds(), 5.0))
            self.progress.waiting_until = None
            await db.call(Store.set_resume_at, self.campaign_id, None)
            return None
        return room

    async def _sleep_or_stop(self, seconds: float) -> None:
        """Wait for time to pass (a retry, a quota window) on the run's clock."""
        await self.clock.wait(self.stop, seconds)

    async def _io_poll(self) -> None:
        """Wait a moment for replies in flight: real time, whatever the clock."""
        await SYSTEM_CLOCK.wait(self.stop, IO_POLL_S)

    async def _worker(self, transport: Transport, queue: asyncio.Queue[Job | None],
                      recorder: Recorder, limiter: RateLimiter, abort: list[BaseException],
                      db: Database) -> None:
        sent_here = 0
        while True:
            job = await queue.get()
            if job is None:
                return
            if self._down is not None:
                # The relay is down: give the row back untried.
                self._in_flight -= 1
                await db.call(Store.unclaim, [job.delivery_id])
                continue
            try:
                await limiter.wait()
                result = await self._send(transport, job)
            except Exception as e:  # the relay refuses our sender, or a bug: stop the run
                abort.append(e)
                self.stop.set()
                self._in_flight -= 1
                await db.call(Store.unclaim, [job.delivery_id])
                return
            if result is None:  # no session: nothing was tried for this recipient
                self._in_flight -= 1
                await db.call(Store.unclaim, [job.delivery_id])
                continue
            try:
                await recorder.record(result)
            except Exception as e:  # disk full, I/O error: the row stays claimed
                abort.append(e)
                self.stop.set()
                return
            finally:
                self._in_flight -= 1
            self._count(result)
            sent_here += 1
            if self.policy.messages_per_connection and \
                    sent_here >= self.policy.messages_per_connection:
                await transport.close()  # the next send opens a fresh connection
                sent_here = 0

    async def _send(self, transport: Transport, job: Job) -> DeliveryResult | None:
        """One delivery's result; None when no session could be opened (the row is
        given back, and enough of those in a row mark the relay down)."""
        message = self.messages(job.list_slug, transport.eight_bit)
        message_id = (make_message_id(job.campaign_id, job.recipient_id, self.msgid_domain)
                      if self.message_id_for is None
                      else self.message_id_for(job, self.msgid_domain))
        url = self.unsubscribe_url(job.uid, job.list_slug)
        try:
            web = self.web_edition_url(job.uid, job.list_slug) if self.web_edition_url else None
            data = message.personalise(to_name=job.name, to_address=job.email,
                                       message_id=message_id, unsubscribe_url=url,
                                       web_edition_url=web)
        except Exception as e:
            # Only this recipient's own data is joined here: whatever goes wrong is
            # about this message alone, which fails alone; the campaign goes on.
            return DeliveryResult(job.delivery_id, DeliveryStatus.FAILED, 0,
                                  f"not sent: {e}", message_id)
        # An internationalised domain goes on the wire in punycode.
        mail_from = self.sender if self.sender_for is None else self.sender_for(job)
        reply = await transport.send(Envelope(mail_from, job.email_ascii or job.email, data,
                                              header_utf8=message.header_utf8(job.email)))
        if reply.stage == "connect":
            self._trouble += 1
            if self._trouble >= RELAY_TROUBLE_LIMIT:
                self._down = reply
            return None
        self._trouble = 0
        return self._judge(job, reply, message_id)

    def _judge(self, job: Job, reply: Reply, message_id: str) -> DeliveryResult:
        text = reply.text.strip() or "(no text)"
        if reply.outcome is Outcome.SENT:
            return DeliveryResult(job.delivery_id, DeliveryStatus.SENT, reply.code, text,
                                  message_id)
        if reply.outcome is Outcome.FAILED and reply.stage == "mail":
            # The relay refuses our sender, not this recipient: every message would
            # fail the same way, and no member should be marked bounced for it.
            raise SenderRefused(self.sender, reply.code, text, self.campaign_id)
        if reply.outcome is Outcome.FAILED:
            # A refusal of our own (nothing reached the relay: no SMTPUTF8 for this
            # address) says nothing about the mailbox: not a bounce.
            return DeliveryResult(job.delivery_id, DeliveryStatus.FAILED, reply.code, text,
                                  message_id, bounce=not reply.local)
        now = self.clock.now()
        first = parse_stamp(job.first_attempt_at)
        if (now - first).total_seconds() >= self.policy.lifetime:
            return DeliveryResult(
                job.delivery_id, DeliveryStatus.FAILED, reply.code,
                f"gave up after {job.attempts} tries: {text}", message_id,
            )
        later = now + dt.timedelta(seconds=self.policy.retry_delay(job.attempts))
        return DeliveryResult(job.delivery_id, DeliveryStatus.DEFERRED, reply.code, text,
                              message_id, next_attempt_at=later)

    def _count(self, result: DeliveryResult) -> None:
        p = self.progress
        if result.status is DeliveryStatus.SENT:
            p.sent += 1
        elif result.status is DeliveryStatus.FAILED:
            p.failed += 1
        else:
            p.deferred += 1
        self.on_progress(p)


async def _put_unless_dead(queue: asyncio.Queue[T], item: T,
                           workers: Iterable[asyncio.Task[None]]) -> bool:
    """Put into a bounded queue, unless every worker has ended (nobody would take it)."""
    if not queue.full():  # the usual case: no task, no wait
        queue.put_nowait(item)
        return True
    if all(w.done() for w in workers):
        return False
    put = asyncio.ensure_future(queue.put(item))
    pending: set[asyncio.Future[Any]] = {put, *workers}
    while not put.done():
        _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if not put.done() and all(w.done() for w in workers):
            put.cancel()
            return False
    return True


def _drain(queue: asyncio.Queue[Job | None]) -> list[Job]:
    out = []
    while not queue.empty():
        item = queue.get_nowait()
        if item is not None:
            out.append(item)
    return out
