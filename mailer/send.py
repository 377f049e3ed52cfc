"""The sending engine: a pool of SMTP connections fed from the campaign ledger.

Guarantees, and how they are kept:

* **Nothing missed.** Work comes only from the ledger (``Store.claim``); a row is
  ``sent`` only with the server's 2xx to DATA, in the reply journal
  (``store.journal``) and then in a committed transaction. Rows claimed but not
  recorded go back to pending when a sender takes the campaign over after a crash,
  once the journal's replies are recorded.
* **Duplicates bounded by the connections.** A connection does not end its next
  message (the final ``.`` of DATA) until the reply to its last one is in the
  journal, so a ``kill -9`` can leave at most one accepted-but-unrecorded message
  per connection. A resent duplicate carries the same Message-ID (it depends only
  on campaign and recipient).
* **Fast.** SQLite calls run on one database thread, off the event loop. Replies
  are journaled in one write per turn of the loop and group-committed
  (``Ledger``) in batches that no connection waits for. Messages are written from
  bytes prepared once per (issue, list) (``mailer.message``), without joining them
  per recipient, and sent pipelined (``mailer.transport``), the next envelope with
  the end of the message before it. On the plain path everything per message
  runs in callbacks (``_Conveyor``, ``Ledger``, ``transport._Wire``): a reply
  starts the next message from the connection's own callback, and a commit's end
  opens the gates waiting for it, so no task wakes up per message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import gc
import queue
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar

from .clock import SYSTEM_CLOCK, Clock
from .config import Config
from .errors import CampaignLocked, RelayUnavailable, SenderRefused, StoreError
from .locks import exclusive, holder_description, lock_path
from .message import MessageIds, PreparedMessage
from .models import DeliveryStatus
from .stamps import parse_stamp
from .store import DeliveryResult, Job, Now, Store
from .store.journal import Journal, journal_path
from .store.ledger import encode_rows, join_rows
from .transport import Envelope, Outcome, Reply, Resume, Transaction, Transport

T = TypeVar("T")
P = ParamSpec("P")
# Consecutive failures to open a session (refused, timed out, 421 at greeting or
# EHLO) after which the relay counts as down: the run stops walking the campaign
# (each recipient would cost a timeout) and backs off instead.
RELAY_TROUBLE_LIMIT = 3
# Group commit (``Ledger``): the most replies in one transaction, and the longest a
# reply waits for one when the run does not need it committed sooner (it is in the
# journal meanwhile: other processes see the ledger at most about this far behind).
# At the rates of small messages (~19,000 a second) the linger ends a commit first;
# a cap of 256 made them about four times as small, for 0.9 µs a row more of the
# database thread's CPU, taken from the two cores the event loop and the relay
# share (bench/README.md).
BATCH_MAX = 1024
LINGER_S = 0.05
# Envelopes made ahead in one turn of the loop (``Run._make_ahead``): enough for the
# caches to stay warm across them, few enough that the replies waiting meanwhile
# are read within a fraction of a millisecond.
MAKE_AHEAD = 8
# The reply journal goes on in a new segment once this big, and a segment goes once
# the ledger has all of it: a million replies would otherwise be some 100 MB on disk.
JOURNAL_SEGMENT_BYTES = 1 << 20
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
    """Counts for this run, updated as replies come."""

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
    made them, and the event loop never waits on disk.

    A plain thread fed by a ``SimpleQueue`` rather than ``run_in_executor``: the
    bulk path makes a call per group commit, and the executor's two chained futures,
    work item and callbacks cost more CPU than the commit of a small batch."""

    def __init__(self, path: Path, *, clock: Now) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="mailer-db", daemon=True)
        self._started = False
        self._path = path
        self._clock = clock

    @property
    def clock(self) -> Now:
        return self._clock

    async def call(self, fn: Callable[Concatenate[Store, P], T], /, *args: P.args,
                   **kwargs: P.kwargs) -> T:
        """``fn(store, *args, **kwargs)`` on the database thread."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._put(_Call(lambda store: fn(store, *args, **kwargs), fut, loop))
        return await fut

    def submit(self, done: Callable[[T | None, BaseException | None], None],
               fn: Callable[Concatenate[Store, P], T], /, *args: P.args,
               **kwargs: P.kwargs) -> None:
        """``fn(store, *args, **kwargs)`` on the database thread; then, on the loop,
        ``done(result, None)`` or ``done(None, error)``: no future, no task."""
        self._put(_Call(lambda store: fn(store, *args, **kwargs), done,
                        asyncio.get_running_loop()))

    def _put(self, call: _Call) -> None:
        if not self._started:
            self._started = True
            self._thread.start()
        self._calls.put(call)

    def _serve(self) -> None:
        store: Store | None = None
        try:
            while (call := self._calls.get()) is not None:
                try:
                    if store is None:
                        store = Store.open(self._path, clock=self._clock)
                    result = call.fn(store)
                except BaseException as e:  # handed to the caller, whatever it is
                    _hand_back(call, None, e)
                else:
                    _hand_back(call, result, None)
        finally:
            if store is not None:
                store.close()

    async def close(self) -> None:
        """Close the store on its thread, after every call made before."""
        if self._started:
            self._calls.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)


class _Call(NamedTuple):
    fn: Callable[[Store], Any]
    future: asyncio.Future[Any] | Callable[[Any, BaseException | None], None]
    loop: asyncio.AbstractEventLoop


def _hand_back(call: _Call, result: object, error: BaseException | None) -> None:
    if isinstance(call.future, asyncio.Future):
        call.loop.call_soon_threadsafe(_settle, call.future, result, error)
    else:
        call.loop.call_soon_threadsafe(call.future, result, error)


def _settle(fut: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    if fut.cancelled():  # the caller stopped waiting; the call itself has run
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class Ledger:
    """The replies on their way to the ledger, and the duplicate bound that goes with
    them.

    A connection does not wait for its message's reply to be recorded before its
    next transaction (whose envelope goes out with the end of the message), and
    waits only before it ends that next message (``gate``) until the reply is safe
    from a ``kill -9``: appended to the campaign's journal (``store.journal``), which
    takes one ``write`` on this thread for all the replies of a turn of the loop. So
    a kill leaves at most one accepted-but-unrecorded message per connection.

    The ledger's rows follow in group commits on the database thread that nothing
    waits for: when a caller needs them (``want``: the run's own reads, its end),
    when the batch is large, or ``LINGER_S`` after the first reply in it. A commit
    is what counts a reply as recorded (``on_recorded``), and checks that the
    campaign is still ours to send (``on_lost``). All in callbacks, without a task
    or a future per reply."""

    def __init__(self, db: Database, journal: Journal,
                 on_recorded: Callable[[int], None], holder: tuple[int, str],
                 on_lost: Callable[[], None], on_failed: Callable[[Exception], None],
                 on_error: Callable[[Exception], None]) -> None:
        self._db = db
        self._journal = journal
        self._on_recorded = on_recorded
        self._holder = holder  # (campaign, owner): checked at each commit
        self._on_lost = on_lost
        # Called for each result a commit failed to record: the run stops.
        self._on_failed = on_failed
        # Called when the journal cannot be written: the run stops, and the gates
        # waiting for it are given the error.
        self._on_error = on_error
        self._batch: list[DeliveryResult] = []  # not yet committed
        self._journaled = 0  # how many of the batch are in the journal
        self._rows: list[str] = []  # their JSON, as the journal has it, for the commit
        self._appends = 0  # journal appends made: the ticket of the next reply
        self._gates: list[Resume] = []  # waiting for the next append
        self._flushing = False
        self._error: Exception | None = None
        self._committing = False
        self._lost_commit = False
        self._wanted = False
        self._kicked = False
        self._closed: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._clock = db.clock
        self._loop = asyncio.get_running_loop()  # kept: each lookup costs a getpid()

    def add(self, result: DeliveryResult) -> int:
        """Queue ``result``; its ticket, for ``gate``."""
        self._batch.append(result)
        if len(self._batch) >= BATCH_MAX:
            self.want()
        elif self._timer is None:
            self._timer = self._loop.call_later(LINGER_S, self.want)
        return self._appends

    def gate(self, ticket: int | None, resume: Resume) -> bool:
        """A message's gate (``transport.Gate``): open (True) once the result behind
        ``ticket`` is in the journal; else ``resume`` is called after the append that
        takes it, at the end of this turn of the loop (with the error if it failed)."""
        if ticket is None or ticket < self._appends:
            return True
        if self._error is not None:
            self._loop.call_soon(resume, self._error)
            return False
        self._gates.append(resume)
        if not self._flushing:
            self._flushing = True
            self._loop.call_soon(self._flush)
        return False

    def _flush(self) -> None:
        """Append what is not in the journal yet, in one write; open the gates."""
        self._flushing = False
        self._append()
        gates, self._gates = self._gates, []
        for resume in gates:
            resume(self._error)

    def _append(self) -> None:
        fresh = self._batch[self._journaled:]
        if not fresh or self._error is not None:
            return
        try:
            self._rows.append(self._journal.append(self._clock().timestamp(), fresh))
        except OSError as e:
            self._error = StoreError(f"{self._journal.path}: could not write the reply journal: "
                                     f"{e.strerror or e}; free some disk space, then "
                                     "`mailer send --resume`")
            self._on_error(self._error)
            return
        self._journaled = len(self._batch)
        self._appends += 1

    def want(self) -> None:
        """Commit what is queued as soon as the previous commit is done (from the
        loop's next turn, so that what the callbacks of this turn add goes too)."""
        self._wanted = True
        if not self._kicked and not self._committing:
            self._kicked = True
            self._loop.call_soon(self._commit)

    def _commit(self) -> None:
        self._kicked = False
        if self._committing:
            return
        if not self._batch:
            self._wanted = False  # nothing to commit: a want for it is void
            self._check_closed()
            return
        if not (self._wanted or self._closed is not None):
            return
        self._wanted = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._append()  # the journal first: it is what the gates and a crash rely on
        batch, self._batch = self._batch, []
        rows, self._rows = self._rows, []
        if self._journaled < len(batch):  # the journal failed: encoded here instead
            rows.append(encode_rows(batch[self._journaled:]))
        self._journaled = 0
        # Everything journaled so far is in this batch: once it is committed, the
        # segment holding it can go.
        sealed = self._journal.seal() if self._journal.size >= JOURNAL_SEGMENT_BYTES \
            and self._error is None else None
        self._committing = True
        self._db.submit(functools.partial(self._done, batch, sealed), _record, join_rows(rows),
                        [r for r in batch if r.bounce], *self._holder)

    def _done(self, batch: list[DeliveryResult], sealed: Path | None, held: bool | None,
              error: BaseException | None) -> None:
        """A commit has ended (on the loop, from the database thread)."""
        self._committing = False
        if error is not None:
            self._lost_commit = True  # its replies are in the journal: keep every segment
            failed = error if isinstance(error, Exception) else RuntimeError(str(error))
            for _ in batch:
                self._on_failed(failed)
        else:
            if sealed is not None and not self._lost_commit:
                self._journal.remove(sealed)
            self._on_recorded(len(batch))
            if not held:
                self._on_lost()
        if self._batch and (self._wanted or self._closed is not None
                            or len(self._batch) >= BATCH_MAX):
            self._commit()
        self._check_closed()

    def _check_closed(self) -> None:
        if self._closed is not None and not self._batch and not self._committing \
                and not self._closed.done():
            self._closed.set_result(None)

    async def close(self) -> None:
        """Commit what is left, then stop."""
        self._closed = self._loop.create_future()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.want()
        self._check_closed()
        await self._closed


def _record(store: Store, rows: str, bounced: list[DeliveryResult], campaign_id: int,
            owner: str) -> bool:
    """Record a batch (its journal's JSON, ``Store.record_rows``); whether the
    campaign is still ours to send. The commits come at least every ``LINGER_S``
    while replies come, so a pause or a cancel is seen within that, whatever the
    size of the claims."""
    store.record_rows(rows, bounced)
    return store.holds(campaign_id, owner)


class _Jobs:
    """Claimed jobs waiting for a connection: a deque, with a future only for a
    connection that finds it empty (the feeder keeps it from being empty)."""

    def __init__(self, capacity: int, takers: int) -> None:
        self.capacity = capacity
        self._items: collections.deque[Job] = collections.deque()
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._room: asyncio.Future[None] | None = None
        self._takers = takers
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put_many(self, jobs: Iterable[Job]) -> None:
        self._items.extend(jobs)
        self._wake_takers()

    async def get(self) -> Job | None:
        """The next job; None once closed and empty."""
        while not self._items:
            if self.closed:
                return None
            fut = asyncio.get_running_loop().create_future()
            self._waiting.append(fut)
            self._wake_room()  # empty: the feeder must know at once
            await fut
        return self.take()

    async def room(self) -> bool:
        """Wait until the deque is below half full; False when no connection is left
        to take jobs."""
        while len(self._items) * 2 >= self.capacity and self._takers > 0:
            self._room = asyncio.get_running_loop().create_future()
            await self._room
        return self._takers > 0

    def take(self) -> Job | None:
        """The next job if one is queued now; None rather than a wait."""
        if not self._items:
            return None
        job = self._items.popleft()
        if len(self._items) * 2 < self.capacity:
            self._wake_room()
        return job

    def give_back(self, job: Job) -> None:
        """A job taken but not tried, first again."""
        self._items.appendleft(job)

    def taker_gone(self) -> None:
        self._takers -= 1
        self._wake_room()

    def close(self) -> list[Job]:
        """No more jobs: whoever waits gets None; returns what was left untaken."""
        self.closed = True
        left = list(self._items)
        self._items.clear()
        self._wake_takers(everyone=True)
        return left

    def _wake_takers(self, everyone: bool = False) -> None:
        n = len(self._waiting) if everyone else min(len(self._items), len(self._waiting))
        for _ in range(n):
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_result(None)

    def _wake_room(self) -> None:
        if self._room is not None and not self._room.done():
            self._room.set_result(None)


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
# (recipient uid, list slug) -> its unsubscribe and web-edition links, None where the
# list or the issue has none (``Outbox.links``: as bytes, in wire form; or text).
LinkSource = Callable[[str, str], tuple[str | bytes | None, str | bytes | None]]


@dataclass
class Run:
    """Everything one sending run needs; ``run()`` sends until nothing is due.

    The run holds the campaign's kernel lock (``mailer.locks``) for its whole life,
    whoever starts it (`mailer send`, the daemon): a second sender is refused at
    once, and a crashed one's lock is gone the moment it dies."""

    database: Path
    campaign_id: int
    messages: MessageSource
    links: LinkSource
    connect: Callable[[], Transport]
    sender: str
    msgid_domain: str
    policy: Policy = field(default_factory=Policy)
    clock: Clock = SYSTEM_CLOCK  # retries, quotas, pauses and the rate limit
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
    _owed: bool = False  # the journal may hold a reply the ledger lacks
    _unrecorded_results: int = 0
    _down: Reply | None = None  # the relay counts as down; the last failure
    # Claimed jobs' envelopes, made ahead (``_make_ahead``) for the relay's 8BITMIME
    # (``_eight_bit``, known once a session is up), taken as each job is sent; None
    # for a job whose envelope is still to be made (in ``_ahead``).
    _made: dict[int, tuple[bool, tuple[Envelope, str] | DeliveryResult] | None] = field(
        default_factory=dict)
    _ahead: collections.deque[Job] = field(default_factory=collections.deque)
    _making: asyncio.Handle | None = None  # the ``_make_some`` due in a later turn
    _eight_bit: bool | None = None
    _landed: asyncio.Future[None] | None = None  # an ``_io_poll`` waiting for a commit
    _ids: MessageIds = field(init=False, repr=False)  # the deliveries' Message-IDs (unsigned)

    async def run(self) -> Progress:
        """Send the campaign's due deliveries. Raises ``CampaignLocked`` when another
        process sends it, ``RelayMisconfigured`` when the relay cannot be used as
        configured, ``RelayUnavailable`` when it is down (after backing off, with
        ``wait_for_retries``, until ``stop``), ``SenderRefused``; the campaign then
        stays resumable."""
        lock = lock_path(self.database, f"campaign-{self.campaign_id}")
        with exclusive(lock, refuse=lambda holder: CampaignLocked(self.campaign_id, holder)), \
                _collector_spared():
            db = Database(self.database, clock=self.clock.now)
            try:
                await db.call(Store.take_over, self.campaign_id, self.owner)
                journal = Journal(journal_path(self.database, self.campaign_id))
                try:
                    return await self._run(db, journal)
                finally:
                    # Kept when a reply in it may be missing from the ledger (a commit
                    # failed, the run was cancelled): the next sender records it.
                    journal.close(remove=not self._owed)
                    await db.call(Store.finish_if_done, self.campaign_id)
                    await db.call(Store.release, self.campaign_id, self.owner)
            finally:
                await db.close()

    async def _run(self, db: Database, journal: Journal) -> Progress:
        self._ids = MessageIds(self.campaign_id, self.msgid_domain)
        self.progress.clock, self.progress.started = self.clock, self.clock.monotonic()
        c = await db.call(Store.campaign, self.campaign_id)
        self.progress.total = sum(c.counts.get(s.value, 0) for s in
                                  (DeliveryStatus.PENDING, DeliveryStatus.DEFERRED,
                                   DeliveryStatus.SENDING))
        pauses = 0
        while True:
            await self._pass(db, journal)
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

    async def _pass(self, db: Database, journal: Journal) -> None:
        """Send over fresh connections until nothing is due, ``stop``, or the relay is
        down (``self._down``)."""
        first = self.connect()
        try:
            await first.connect()
        except (ConnectionError, OSError, TimeoutError) as e:
            self._down = Reply(0, str(e) or type(e).__name__, Outcome.DEFERRED, "connect")
            return
        self._eight_bit = first.eight_bit
        transports = [first] + [self.connect() for _ in range(self.policy.concurrency - 1)]
        # Unpaced, deep enough that a connection never finds it empty while a claim
        # is on its way (at 16 connections they empty 64 in a few ms, and one that
        # finds none leaves its pipelined chain); paced by a rate limit, shallow, so
        # that an unsubscribe during the campaign still finds its row unclaimed (a
        # claim skips it) for all but the next seconds' messages. Claimed half at a
        # time.
        depth = max(self.policy.concurrency * 4, 64) if self.policy.rate > 0 \
            else max(self.policy.concurrency * 16, 256)
        jobs = _Jobs(depth, takers=len(transports))
        abort: list[BaseException] = []
        self._owed = True
        ledger = Ledger(db, journal, self._recorded, (self.campaign_id, self.owner),
                        self.stop.set, functools.partial(self._unrecorded, abort),
                        functools.partial(self._stopped_by, abort))
        limiter = RateLimiter(self.policy.rate, clock=self.clock)
        workers = [
            asyncio.create_task(self._worker(t, jobs, ledger, limiter, abort, db))
            for t in transports
        ]
        try:
            await self._feed(db, jobs, ledger)
            # A normal end (or --limit): let what is claimed go out.
            while self._in_flight and not self.stop.is_set() and self._down is None \
                    and not all(w.done() for w in workers):
                ledger.want()
                await self._io_poll()
        finally:
            # Stopping: claimed but not yet sent goes back to pending, then each
            # worker finishes the message it has in hand and takes its None.
            left = jobs.close()
            await asyncio.gather(*workers, return_exceptions=True)
            await ledger.close()
            self._owed = self._unrecorded_results > 0
            left += jobs.close()
            if left:
                self._in_flight -= len(left)
                await db.call(Store.unclaim, [j.delivery_id for j in left])
            await asyncio.gather(*(t.close() for t in transports), return_exceptions=True)
            self._made.clear()  # of jobs given back: made again when claimed again
            self._ahead.clear()
            if self._making is not None:
                self._making.cancel()
                self._making = None
        if abort:
            raise abort[0]

    async def _feed(self, db: Database, jobs: _Jobs, ledger: Ledger) -> None:
        batch = jobs.capacity // 2
        while not self.stop.is_set() and self._down is None:
            if self.limit is not None and self._claimed >= self.limit:
                return
            if not await jobs.room():
                return  # every connection has stopped
            room = await self._quota_room(db, ledger)
            if room is None:
                continue  # waited for the quota window; look again
            want = min(batch, room - self._in_flight)
            if self.limit is not None:
                want = min(want, self.limit - self._claimed)
            if want <= 0:  # the quota's room is in flight: wait for replies
                ledger.want()
                await self._io_poll()
                continue
            claimed = await db.call(Store.claim, self.campaign_id, self.owner, want,
                                    self.clock.now())
            if claimed is None:
                # Paused or cancelled: what is queued goes back, in flight finishes.
                self.stop.set()
                return
            if not claimed:
                if not await self._more_to_come(db, ledger):
                    return
                continue
            self._claimed += len(claimed)
            self._in_flight += len(claimed)
            self._make_ahead(claimed)
            jobs.put_many(claimed)

    async def _more_to_come(self, db: Database, ledger: Ledger) -> bool:
        """Nothing was due: wait for replies in flight, then for the next retry."""
        while self._in_flight and not self.stop.is_set() and self._down is None:
            ledger.want()
            await self._io_poll()
        c = await db.call(Store.campaign, self.campaign_id)
        if c.status.value != "sending" or self.stop.is_set() or self._down is not None:
            return False
        due = await db.call(Store.next_attempt_at, self.campaign_id)
        if due is None:
            return False  # nothing pending or deferred: done
        if due == "":
            # Pending rows behind the claims' cursor (given back untried: a session
            # that failed to open, a claim that raced an unclaim): with none in
            # flight, they are claimed from the first again.
            await db.call(Store.rewind_claims, self.campaign_id)
            return True
        if not self.wait_for_retries:
            return False
        when = parse_stamp(due)
        await self._sleep_or_stop(max((when - self.clock.now()).total_seconds(), 0.0) + 0.01)
        return True

    async def _quota_room(self, db: Database, ledger: Ledger) -> int | None:
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
                ledger.want()
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
        """Wait a moment for replies in flight: until the next commit records some (or
        fails to), ``stop``, or ``IO_POLL_S`` of real time, whatever the clock. (A poll
        alone left the last commit of every pass unseen for 10 ms on average: 1% of
        sending 10,000 small messages.)"""
        if self.stop.is_set():
            return
        loop = asyncio.get_running_loop()
        self._landed = landed = loop.create_future()
        stopped = loop.create_task(self.stop.wait())
        try:
            await asyncio.wait((landed, stopped), timeout=IO_POLL_S,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            self._landed = None

    def _land(self) -> None:
        """A commit has ended: wake the ``_io_poll`` waiting for it."""
        if self._landed is not None and not self._landed.done():
            self._landed.set_result(None)

    async def _worker(self, transport: Transport, jobs: _Jobs, ledger: Ledger,
                      limiter: RateLimiter, abort: list[BaseException], db: Database) -> None:
        try:
            await self._work(transport, jobs, ledger, limiter, abort, db)
        finally:
            jobs.taker_gone()

    async def _work(self, transport: Transport, jobs: _Jobs, ledger: Ledger,
                    limiter: RateLimiter, abort: list[BaseException], db: Database) -> None:
        conveyor = _Conveyor(self, transport, jobs, ledger)
        while not self.stop.is_set():
            if not len(jobs):
                ledger.want()  # nothing to send meanwhile: no reason to hold replies back
            job = await jobs.get()
            if job is None:
                return
            if self._down is not None:
                # The relay is down: give the row back untried.
                self._in_flight -= 1
                await db.call(Store.unclaim, [job.delivery_id])
                continue
            conveyor.job = job
            try:
                await limiter.wait()
                if self.stop.is_set():  # while it waited for its turn
                    jobs.give_back(job)
                    return
                # Connected first: which message (8bit or base64) depends on the session.
                failure = await transport.open()
                if failure is not None:  # no session: nothing was tried for this recipient
                    self._no_session(failure)
                    self._in_flight -= 1
                    await db.call(Store.unclaim, [job.delivery_id])
                    continue
                await conveyor.run(job)
            except _Unrecorded:
                self._in_flight -= 1  # the run stops (the ledger said why); the row
                return  # stays claimed, pending again when the campaign is taken over
            except asyncio.CancelledError:
                transport.abort()
                raise
            except Exception as e:  # the relay refuses our sender, or a bug: stop the run
                abort.append(e)
                self.stop.set()
                self._in_flight -= 1
                await db.call(Store.unclaim, [conveyor.job.delivery_id])
                return
            if self.policy.messages_per_connection and \
                    conveyor.sent_here >= self.policy.messages_per_connection:
                await transport.close()  # the next send opens a fresh connection
                conveyor.sent_here = 0

    def _recorded(self, count: int) -> None:
        """``count`` replies are committed (they were counted as they came)."""
        self._in_flight -= count
        self._land()

    def _unrecorded(self, abort: list[BaseException], error: Exception) -> None:
        """A reply could not be committed (disk full, I/O error): the run stops, and
        its row stays claimed (pending again when the campaign is taken over; the
        journal has the reply)."""
        self._in_flight -= 1
        self._unrecorded_results += 1
        self._land()
        self._stopped_by(abort, error)

    def _stopped_by(self, abort: list[BaseException], error: Exception) -> None:
        if not any(e is error for e in abort):
            abort.append(error)
        self.stop.set()

    def _make_ahead(self, jobs: list[Job]) -> None:
        """Make a claim's envelopes ahead, ``MAKE_AHEAD`` at a time, one batch per turn
        of the loop. Made one at a time as each message goes, the same work ran with
        cold caches (each turn of the loop follows a wake-up and a 100 KB write): made
        in batches, the run measured 10% less CPU per 100 KB message. Made all in one
        go (a claim's 128), they held up every connection's replies for a few
        milliseconds per claim, time in which the relay, its messages answered, waited
        for the next: small messages went out a tenth to a quarter slower
        (bench/README.md). What they hold depends on the job alone, but for the
        relay's 8BITMIME: one made for the other kind is made again (``_envelope``)."""
        if self._eight_bit is None:
            return
        made = self._made
        for job in jobs:
            made[job.delivery_id] = None
        self._ahead.extend(jobs)
        if self._making is None:
            self._make_some()

    def _make_some(self) -> None:
        """The next ``MAKE_AHEAD`` envelopes still wanted (one sent meanwhile was made
        as it went, and is no longer in ``_made``); the rest in a later turn."""
        self._making = None
        eight_bit, made, ahead = self._eight_bit, self._made, self._ahead
        if eight_bit is None:
            return
        count = 0
        while ahead and count < MAKE_AHEAD:
            job = ahead.popleft()
            if made.get(job.delivery_id, False) is not None:
                continue  # taken already (no entry), or made
            count += 1
            try:
                made[job.delivery_id] = (eight_bit, self._envelope_for(eight_bit, job))
            except Exception:
                # Made again as it goes, where what it raises stops the run.
                del made[job.delivery_id]
        if ahead:
            self._making = asyncio.get_running_loop().call_soon(self._make_some)

    def _envelope(self, transport: Transport, job: Job) -> tuple[Envelope, str] | DeliveryResult:
        """The delivery's envelope and Message-ID (made ahead, or now); or its result
        at once, when its own data cannot be joined into a message."""
        made = self._made.pop(job.delivery_id, None)
        if made is not None and made[0] == transport.eight_bit:
            return made[1]
        return self._envelope_for(transport.eight_bit, job)

    def _envelope_for(self, eight_bit: bool, job: Job) -> tuple[Envelope, str] | DeliveryResult:
        message = self.messages(job.list_slug, eight_bit)
        wire_id: str | bytes
        if self.message_id_for is None:
            message_id = self._ids(job.recipient_id)
            wire_id = message_id.encode("ascii")  # made here: goes in as it is
        else:
            message_id = wire_id = self.message_id_for(job, self.msgid_domain)
        try:
            url, web = self.links(job.uid, job.list_slug)
            data = message.personalise_pieces(to_name=job.name, to_address=job.email,
                                              message_id=wire_id, unsubscribe_url=url,
                                              web_edition_url=web)
        except Exception as e:
            # Only this recipient's own data is joined here: whatever goes wrong is
            # about this message alone, which fails alone; the campaign goes on.
            return _result(job, DeliveryStatus.FAILED, 0, f"not sent: {e}", message_id)
        # An internationalised domain goes on the wire in punycode.
        mail_from = self.sender if self.sender_for is None else self.sender_for(job)
        return Envelope(mail_from, job.email_ascii or job.email, data,
                        header_utf8=message.header_utf8(job.email)), message_id

    def _no_session(self, reply: Reply) -> None:
        self._trouble += 1
        if self._trouble >= RELAY_TROUBLE_LIMIT:
            self._down = reply

    def _judge(self, job: Job, reply: Reply, message_id: str) -> DeliveryResult:
        text = reply.text.strip() or "(no text)"
        if reply.outcome is Outcome.SENT:
            return _result(job, DeliveryStatus.SENT, reply.code, text, message_id)
        if reply.outcome is Outcome.FAILED and reply.stage == "mail":
            # The relay refuses our sender, not this recipient: every message would
            # fail the same way, and no member should be marked bounced for it.
            raise SenderRefused(self.sender, reply.code, text, self.campaign_id)
        if reply.outcome is Outcome.FAILED:
            # A refusal of our own (nothing reached the relay: no SMTPUTF8 for this
            # address) says nothing about the mailbox: not a bounce.
            return _result(job, DeliveryStatus.FAILED, reply.code, text, message_id,
                           bounce=not reply.local)
        now = self.clock.now()
        first = parse_stamp(job.first_attempt_at)
        if (now - first).total_seconds() >= self.policy.lifetime:
            return _result(job, DeliveryStatus.FAILED, reply.code,
                           f"gave up after {job.attempts} tries: {text}", message_id)
        later = now + dt.timedelta(seconds=self.policy.retry_delay(job.attempts))
        return _result(job, DeliveryStatus.DEFERRED, reply.code, text, message_id, later)

    def _count(self, result: DeliveryResult) -> None:
        p = self.progress
        if result.status is DeliveryStatus.SENT:
            p.sent += 1
        elif result.status is DeliveryStatus.FAILED:
            p.failed += 1
        else:
            p.deferred += 1
        self.on_progress(p)


def _result(job: Job, status: DeliveryStatus, code: int, text: str, message_id: str,
            later: dt.datetime | None = None, bounce: bool = False) -> DeliveryResult:
    """``job``'s result, with its attempt (a claim leaves a never-tried row as it is:
    the attempt is written with the reply)."""
    return DeliveryResult(job.delivery_id, status, code, text, message_id, later, bounce,
                          job.attempts, job.first_attempt_at)


class _Conveyor:
    """One connection's messages, in callbacks: as a message is ended, the next one's
    envelope goes in the same write (``transport.Feed``), and each reply is judged
    and queued for the ledger from the connection's own callback, without a task
    waking up per message, for as long as the next is plain: a job is queued, the
    session is up, no rate limit spaces the messages, the run goes on and the
    connection has messages left. Anything else goes back to the worker
    (``Run._work``), which waits, reconnects or stops as the case needs.

    ``run`` ends once no transaction of it is in flight; it raises what stopped the
    run: the relay refusing our sender (``SenderRefused``), a reply journal that could
    not be written (``_Unrecorded``) or a bug; ``job`` is then the job that raised."""

    def __init__(self, run: Run, transport: Transport, jobs: _Jobs, ledger: Ledger) -> None:
        self._run = run
        self._transport = transport
        self._jobs = jobs
        self._ledger = ledger
        self._chain = run.policy.rate <= 0  # a rate limit waits between messages
        self._per_connection = run.policy.messages_per_connection
        self.sent_here = 0
        self.job: Job  # the job the worker took; the one that raised, when one did
        # The jobs on the wire, with their Message-IDs, in the order of their replies.
        self._flight: collections.deque[tuple[Job, str]] = collections.deque()
        self._ticket: int | None = None  # of this connection's last result
        self._error: BaseException | None = None
        self._future: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()

    def run(self, job: Job) -> asyncio.Future[None]:
        self._future = self._loop.create_future()
        self._error = None
        self._go(job)
        return self._future

    def _go(self, job: Job | None) -> None:
        """Start ``job`` (or the first after it that goes on the wire), unless none is
        left: then the run is over for now."""
        txn = self._prepared(job) if job is not None else None
        if txn is None:
            self._end()
            return
        reply = self._transport.begin(txn)
        if reply is not None:  # the session ended meanwhile: nothing was tried
            self._done(reply, None)

    def _prepared(self, job: Job | None) -> Transaction | None:
        """The transaction of ``job`` or of the first next job whose message can go on
        the wire; each one refused before the wire (its own data, a local refusal) is
        judged here. None when none is left, or on an error (kept for ``run``)."""
        run = self._run
        while job is not None:
            try:
                prepared = run._envelope(self._transport, job)
                if isinstance(prepared, DeliveryResult):
                    result = prepared
                else:
                    envelope, message_id = prepared
                    txn = self._transport.prepare(envelope, self._gate, self._done, self._feed)
                    if not isinstance(txn, Reply):
                        self._flight.append((job, message_id))
                        return txn
                    result = self._judged(job, txn, message_id)
            except Exception as e:
                self._failed(e, job)
                return None
            self._add(result)
            job = self._next()
        return None

    def _feed(self) -> Transaction | None:
        """The next transaction, asked for by the connection as a message is ended."""
        if self._error is not None:
            return None
        return self._prepared(self._next())

    def _gate(self, resume: Resume) -> bool:
        return self._ledger.gate(self._ticket, resume)

    def _done(self, reply: Reply | None, error: BaseException | None) -> None:
        """The first transaction on the wire has ended (a callback of the connection)."""
        job, message_id = self._flight.popleft()
        if reply is None:
            self._failed(_Unrecorded(str(error)), job)  # its gate: the journal failed
        elif reply.stage == "queued" or reply.stage == "connect":
            self._jobs.give_back(job)  # never tried: first again, on a fresh connection
        else:
            try:
                result = self._judged(job, reply, message_id)
            except Exception as e:
                self._failed(e, job)
            else:
                self._add(result)
        if self._flight:
            return  # the next one's replies come next
        if self._error is not None:
            self._end()
            return
        self._go(self._next())

    def _failed(self, error: BaseException, job: Job) -> None:
        """The first error stops the run (once nothing of it is in flight); a job that
        fails after it goes back, for the run's end to give back to the ledger."""
        if self._error is None:
            self._error, self.job = error, job
        else:
            self._jobs.give_back(job)

    def _judged(self, job: Job, reply: Reply, message_id: str) -> DeliveryResult:
        self._run._trouble = 0  # the relay answered
        return self._run._judge(job, reply, message_id)

    def _add(self, result: DeliveryResult) -> None:
        self._ticket = self._ledger.add(result)
        self.sent_here += 1
        self._run._count(result)

    def _next(self) -> Job | None:
        """The next job, if it can go at once on this connection."""
        run = self._run
        if not self._chain or run.stop.is_set() or run._down is not None \
                or not self._transport.connected or (
                    self._per_connection
                    and self.sent_here + len(self._flight) >= self._per_connection):
            return None
        return self._jobs.take()

    def _end(self) -> None:
        fut = self._future
        if fut is None or fut.done():
            return
        if self._error is None:
            fut.set_result(None)
        else:
            fut.set_exception(self._error)


@contextlib.contextmanager
def _collector_spared() -> Iterator[None]:
    """For the run, the cyclic garbage collector leaves alone what exists at its start
    (``gc.freeze``): the modules, the templates, the prepared messages live through
    it anyway, and each message's short-lived objects set off collections that would
    walk all of them again (measured: 9% of a run's CPU). Given back at the end, so
    a daemon's later garbage is collected as before."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class _Unrecorded(Exception):
    """The connection's previous reply could not be journaled: its next message is
    not ended (the transport drops the connection instead)."""
