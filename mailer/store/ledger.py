"""The campaign ledger: issues, campaigns and one delivery row per recipient.

Sending is restartable because the ledger, not the sender's memory, says what is
left: starting a campaign writes every delivery row in one transaction; a sender
claims rows (status ``sending``), and a row becomes ``sent`` only with the server's
250 reply, journaled first (``store.journal``) and recorded in a group commit
after. After a crash, a sender taking the campaign over records the journal's
replies, and rows still ``sending`` go back to ``pending``, so the only mail that
can go out twice is what was in flight at the crash.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import AlreadySent, CampaignNotSending, InvalidInput, UnknownCampaign
from ..models import Campaign, CampaignStatus, Delivery, DeliveryStatus, Role, Status
from ..stamps import stamp as _stamp
from .base import BUSY_TIMEOUT_S, StoreBase


def _checkpoint_in_background(path: Path) -> None:
    # The connection is opened here, before the caller goes on: while it is open the
    # caller's is never the last one, whose closing would checkpoint in the foreground.
    # A checkpoint left undone is done by a later commit: nothing to report.
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    except sqlite3.Error:
        return

    def checkpoint() -> None:
        with contextlib.suppress(sqlite3.Error), contextlib.closing(conn):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    threading.Thread(target=checkpoint, name="mailer-checkpoint", daemon=True).start()


OPEN_STATUSES = (DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.DEFERRED)
_OPEN_SQL = ", ".join(f"'{s.value}'" for s in OPEN_STATUSES)


class Job(NamedTuple):
    """A claimed delivery: what a sender needs to build and send one message. (A
    tuple: a claim makes one per row on the database thread, which holds the GIL
    meanwhile, and a frozen dataclass costs four times as much to make.)"""

    delivery_id: int
    campaign_id: int
    recipient_id: int
    uid: str
    email: str
    email_ascii: str | None
    name: str | None
    list_slug: str
    attempts: int  # including this one
    first_attempt_at: str


class DeliveryResult(NamedTuple):
    """What happened to one claimed delivery, to be recorded (a tuple, as ``Job``:
    one per message)."""

    delivery_id: int
    status: DeliveryStatus  # SENT, DEFERRED or FAILED
    code: int
    response: str
    message_id: str
    next_attempt_at: dt.datetime | None = None  # for DEFERRED
    bounce: bool = False  # a permanent refusal: stop mailing the address on that list
    # The job's attempt (``Job.attempts``, ``Job.first_attempt_at``), written with the
    # reply: a claim of a never-tried row leaves it as it is. None: as the row has it.
    attempts: int | None = None
    first_attempt_at: str | None = None


# The replies of a group commit in one statement, from one JSON array of
# [id, status, code, response, message id, next attempt, bounce, attempts, first
# attempt] (the reply journal's rows, ``store.journal``): one SQLite step for the
# batch. With a row per step (executemany), each step lets go of the GIL, and taking
# it back from the event loop's thread while it is busy cost up to 20 times the
# step's own CPU (measured at 9 rows a commit: 14 µs a row alone, 217 µs beside a
# busy Python thread; as one statement 16 and 95 µs). In the bench's runs on uvloop,
# whose loop lets go of the GIL around every callback, the gain was within the noise.
_BATCH_RESULTS = (
    "UPDATE deliveries SET status = json_extract(r.value, '$[1]'), "
    "last_code = json_extract(r.value, '$[2]'), "
    "last_response = json_extract(r.value, '$[3]'), "
    "message_id = json_extract(r.value, '$[4]'), "
    "next_attempt_at = json_extract(r.value, '$[5]'), updated_at = ?1, "
    "attempts = COALESCE(json_extract(r.value, '$[7]'), attempts), "
    "first_attempt_at = COALESCE(first_attempt_at, json_extract(r.value, '$[8]')), "
    "sent_at = CASE WHEN json_extract(r.value, '$[1]') = 'sent' THEN ?1 ELSE sent_at END "
    "FROM json_each(?2) AS r WHERE deliveries.id = json_extract(r.value, '$[0]')"
)


_ROWS = (
    "SELECT d.id, d.recipient_id, r.uid, r.email, r.email_ascii, r.name, l.slug, "
    "d.attempts, d.first_attempt_at, s.status AS sub_status FROM deliveries d "
    "JOIN recipients r ON r.id = d.recipient_id JOIN lists l ON l.id = d.list_id "
    "JOIN subscriptions s ON s.recipient_id = d.recipient_id AND s.list_id = d.list_id "
    "WHERE d.campaign_id = ?1 AND "
)
_CLAIM = (
    "SELECT json_group_array(json_array(id, recipient_id, uid, email, email_ascii, "
    "name, slug, attempts, first_attempt_at, sub_status)) FROM ({rows} LIMIT ?3)"
)
# Due rows with a time: retries, and any row a crash left with one. Each part is
# one range of the status index (an OR of the two would scan the campaign).
_DUE = (_ROWS + "d.status IN ('deferred', 'pending') AND d.next_attempt_at <= ?2 "
        "UNION ALL " + _ROWS + "d.status = 'deferred' AND d.next_attempt_at IS NULL")
# Rows never tried, in order, after the cursor: one range of the status index.
_FRESH = (_ROWS + "d.status = 'pending' AND d.next_attempt_at IS NULL AND d.id > ?2 "
          "ORDER BY d.id")


def _encoder() -> Callable[[object], str]:
    """``json.JSONEncoder(ensure_ascii=False).encode``, its C encoder made once: the
    JSONEncoder makes one on every call (about a quarter of encoding the one or two
    rows of a journal append, which comes once per turn of the loop). Without the C
    accelerator (another Python), the JSONEncoder itself."""
    make = getattr(json.encoder, "c_make_encoder", None)
    plain = json.JSONEncoder(ensure_ascii=False)
    if make is None:
        return plain.encode

    def default(o: object) -> object:
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

    # As JSONEncoder.iterencode makes it, without the check for circular containers
    # (rows of flat tuples): markers, default, string encoder, indent, separators,
    # sort_keys, skipkeys, allow_nan.
    chunks = make(None, default, json.encoder.encode_basestring, None,
                  plain.key_separator, plain.item_separator, False, False, True)
    return lambda o: "".join(chunks(o, 0))


_encode = _encoder()  # made once, not per batch
_ACTIVE = Status.ACTIVE.value


def encode_rows(results: Sequence[DeliveryResult]) -> str:
    """Replies as the JSON array ``_BATCH_RESULTS`` reads (and the reply journal
    keeps). The status is a StrEnum: JSON writes it as its value (``.value`` is a
    property, slow for something done once per reply)."""
    return _encode([
        (r.delivery_id, r.status, r.code, r.response[:500], r.message_id,
         _stamp(r.next_attempt_at) if r.next_attempt_at else None, r.bounce,
         r.attempts, r.first_attempt_at)
        for r in results])


def join_rows(encoded: Sequence[str]) -> str:
    """One JSON array of the rows of several ``encode_rows`` arrays."""
    if len(encoded) == 1:
        return encoded[0]
    return "[" + ",".join(e[1:-1] for e in encoded if e != "[]") + "]"


class LedgerMixin(StoreBase):
    """Issues, campaigns and deliveries."""

    # --- issues and campaigns -------------------------------------------------

    def record_issue(
        self, *, year: int, number: int, total_number: int | None, date: str | None,
        label: str, sha256: str,
    ) -> int:
        """The issue's row, created or brought up to date (issues are identified by
        year and number: an edited file is the same issue)."""
        with self.write():
            row = self.db.execute(
                "SELECT id, source_sha256 FROM issues WHERE year = ? AND number = ?",
                [year, number],
            ).fetchone()
            if row is None:
                cur = self.db.execute(
                    "INSERT INTO issues (year, number, total_number, date, label, source_sha256, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [year, number, total_number, date, label, sha256, self._now()],
                )
                assert cur.lastrowid is not None
                return cur.lastrowid
            if row[1] != sha256:
                self.db.execute(
                    "UPDATE issues SET total_number = ?, date = ?, label = ?, source_sha256 = ? "
                    "WHERE id = ?",
                    [total_number, date, label, sha256, row[0]],
                )
            return int(row[0])

    def create_campaign(
        self,
        issue_id: int,
        lists: Sequence[str],
        *,
        source_path: str | None,
        sha256: str,
        again: bool = False,
        scheduled_at: dt.datetime | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> int:
        """A new campaign. Without ``scheduled_at`` it starts at once (deliveries written
        in the same transaction); with it, it waits as ``pending``. ``before_commit``
        runs in that transaction once the rows are written: what it stores commits
        with the campaign, and if it raises there is no campaign."""
        lists = tuple(dict.fromkeys(lists))  # each list once
        with self._writing_deliveries(), self.write():
            if self.db.execute("SELECT 1 FROM issues WHERE id = ?", [issue_id]).fetchone() is None:
                raise InvalidInput(f"issue {issue_id} is not recorded; record it first")
            for slug in lists:
                self.get_list(slug)
            if not again:
                self.check_repeat(issue_id, lists)
            status = CampaignStatus.PENDING if scheduled_at else CampaignStatus.SENDING
            cur = self.db.execute(
                "INSERT INTO campaigns (issue_id, lists, status, source_path, source_sha256, "
                "scheduled_at, created_at, created_by, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [issue_id, ",".join(lists), status.value, source_path, sha256,
                 _stamp(scheduled_at) if scheduled_at else None, self._now(), self.actor,
                 None if scheduled_at else self._now()],
            )
            campaign_id = cur.lastrowid
            assert campaign_id is not None
            self._event("campaign.created", f"campaign {campaign_id}", lists=list(lists),
                        scheduled_at=_stamp(scheduled_at) if scheduled_at else None,
                        again=again)
            if not scheduled_at:
                self._write_deliveries(campaign_id, lists)
            if before_commit is not None:
                before_commit()
            return campaign_id

    def find_issue(self, year: int, number: int) -> int | None:
        r = self.db.execute("SELECT id FROM issues WHERE year = ? AND number = ?",
                            [year, number]).fetchone()
        return int(r[0]) if r else None

    def check_repeat(self, issue_id: int, lists: Sequence[str]) -> None:
        """Refuse a second campaign of the same issue to the same list."""
        rows = self.db.execute(
            "SELECT c.id, c.lists, c.status, i.label FROM campaigns c "
            "JOIN issues i ON i.id = c.issue_id WHERE c.issue_id = ? AND c.status NOT IN (?, ?) "
            "AND NOT (c.status = ? AND c.started_at IS NULL)",  # failed before sending
            [issue_id, CampaignStatus.CANCELLED.value, CampaignStatus.MISSED.value,
             CampaignStatus.FAILED.value],
        ).fetchall()
        for cid, slugs, status, label in rows:
            overlap = sorted(set(slugs.split(",")) & set(lists))
            if overlap:
                finish = (f", or `mailer send --resume {cid}` to finish that one"
                          if status == CampaignStatus.SENDING.value else "")
                raise AlreadySent(
                    f"{label} already has campaign {cid} ({status}) to {', '.join(overlap)}; "
                    f"use --again to send it once more{finish}"
                )

    def start_campaign(self, campaign_id: int) -> int:
        """Move a pending campaign to sending and write its deliveries; returns their count."""
        with self._writing_deliveries(), self.write():
            c = self.campaign(campaign_id)
            if c.status is not CampaignStatus.PENDING:
                raise InvalidInput(f"campaign {campaign_id} is {c.status.value}, not pending")
            self.db.execute(
                "UPDATE campaigns SET status = ?, started_at = ? WHERE id = ?",
                [CampaignStatus.SENDING.value, self._now(), campaign_id],
            )
            return self._write_deliveries(campaign_id, c.lists)

    @contextlib.contextmanager
    def _writing_deliveries(self) -> Iterator[None]:
        """Around the transactions that write a campaign's delivery rows (a million
        of them in a few seconds, while a sender waits to start).

        Foreign keys go unchecked: every key these transactions insert comes from a
        join with its parent row (recipients, lists), or is the campaign checked or
        inserted in the same transaction, so SQLite's own check (three B-tree look-ups
        a row) would only repeat what the joins did, at about a quarter of the
        insert's time. (The pragma is a no-op in an open transaction, which then
        keeps the check.)

        The rows pass through the WAL (some 140 MB for a million), and the commit
        would copy them into the database file before returning (a checkpoint: about
        0.7 s). That copy is started in the background instead, on a connection of
        its own; while it runs, the sender's commits find the checkpoint taken and
        go on without it (SQLite's automatic checkpoints never wait for one)."""
        conn = self.db.conn
        keys = int(conn.execute("PRAGMA foreign_keys").fetchone()[0])
        pages = int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            yield
        finally:
            conn.execute(f"PRAGMA foreign_keys = {keys}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
        if pages > 0 and not conn.in_transaction:
            _checkpoint_in_background(self.path)

    def _write_deliveries(self, campaign_id: int, lists: Sequence[str]) -> int:
        # One row per active subscriber, in SQL so a million rows never pass through
        # Python. report-to lists first (Role.rank): an address on both lists gets one
        # copy, as 报.
        roles = {ml.slug: ml.role for ml in self.lists()}
        ordered = sorted(lists, key=lambda s: roles[s].rank)
        total = 0
        for slug in ordered:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO deliveries (campaign_id, recipient_id, list_id, email, "
                "status, attempts, updated_at) "
                "SELECT ?, r.id, l.id, r.email, 'pending', 0, ? FROM subscriptions s "
                "JOIN recipients r ON r.id = s.recipient_id JOIN lists l ON l.id = s.list_id "
                "WHERE l.slug = ? AND s.status = 'active'",
                [campaign_id, self._now(), slug],
            )
            total += cur.rowcount
        self._event("campaign.started", f"campaign {campaign_id}", deliveries=total)
        return total

    def audience(self, lists: Sequence[str]) -> dict[str, int]:
        """How many distinct addresses each list would get now (report-to first, as
        the deliveries are written). Counted in SQL: a million ids never reach Python."""
        out: dict[str, int] = {}
        roles = {ml.slug: ml.role for ml in self.lists()}
        earlier: list[str] = []
        for slug in sorted(lists, key=lambda s: roles[s].rank):
            marks = ",".join("?" * len(earlier)) or "NULL"
            out[slug] = self.db.execute(
                "SELECT COUNT(*) FROM subscriptions s JOIN lists l ON l.id = s.list_id "
                "WHERE l.slug = ? AND s.status = 'active' AND s.recipient_id NOT IN ("
                "SELECT s2.recipient_id FROM subscriptions s2 JOIN lists l2 ON l2.id = s2.list_id "
                f"WHERE s2.status = 'active' AND l2.slug IN ({marks}))",
                [slug, *earlier],
            ).fetchone()[0]
            earlier.append(slug)
        return out

    def set_campaign_status(
        self, /, campaign_id: int, status: CampaignStatus, *,
        allowed_from: Sequence[CampaignStatus], resume_at: dt.datetime | None = None,
        reason: str | None = None,
    ) -> None:
        with self.write():
            c = self.campaign(campaign_id)
            if c.status not in allowed_from:
                raise InvalidInput(
                    f"campaign {campaign_id} is {c.status.value}; it cannot become {status.value}"
                )
            finished = self._now() if status in (CampaignStatus.SENT,
                                                 CampaignStatus.FAILED) else None
            self.db.execute(
                "UPDATE campaigns SET status = ?, finished_at = COALESCE(?, finished_at), "
                "resume_at = ?, status_reason = ? WHERE id = ?",
                [status.value, finished, _stamp(resume_at) if resume_at else None,
                 reason, campaign_id],
            )
            self._event("campaign.status", f"campaign {campaign_id}",
                        before={"status": c.status.value}, after={"status": status.value},
                        **({"reason": reason} if reason else {}))

    def approve(self, campaign_id: int) -> None:
        """Record who approved a scheduled campaign (schedule.require_approval)."""
        with self.write():
            c = self.campaign(campaign_id)
            if c.status is not CampaignStatus.PENDING:
                raise InvalidInput(f"campaign {campaign_id} is {c.status.value}; only a pending "
                                   "campaign is approved")
            if c.approved_by:
                raise InvalidInput(f"campaign {campaign_id} was already approved by "
                                   f"{c.approved_by}")
            self.db.execute("UPDATE campaigns SET approved_by = ?, approved_at = ? WHERE id = ?",
                            [self.actor, self._now(), campaign_id])
            self._event("campaign.approved", f"campaign {campaign_id}")

    def reschedule(self, campaign_id: int, when: dt.datetime, *, sha256: str,
                   source_path: str) -> None:
        """A pending campaign's file was edited: new time and content; approval again."""
        with self.write():
            c = self.campaign(campaign_id)
            if c.status is not CampaignStatus.PENDING:
                raise InvalidInput(f"campaign {campaign_id} is {c.status.value}, not pending")
            self.db.execute(
                "UPDATE campaigns SET scheduled_at = ?, source_sha256 = ?, source_path = ?, "
                "approved_by = NULL, approved_at = NULL WHERE id = ?",
                [_stamp(when), sha256, source_path, campaign_id],
            )
            self._event("campaign.rescheduled", f"campaign {campaign_id}",
                        before={"scheduled_at": c.scheduled_at}, after={"scheduled_at":
                                                                        _stamp(when)})

    def campaign_for_source(self, source_path: str) -> Campaign | None:
        """The newest campaign made from this file (the watched folder's memory)."""
        r = self.db.execute(self._CAMPAIGN_SQL + " WHERE c.source_path = ? ORDER BY c.id DESC "
                            "LIMIT 1", [source_path]).fetchone()
        return self._campaign(r, self._counts([r[0]])[r[0]]) if r else None

    def set_resume_at(self, campaign_id: int, resume_at: dt.datetime | None) -> None:
        """Record (or clear) a quota pause, so `mailer log` can show it."""
        with self.write():
            self.db.execute("UPDATE campaigns SET resume_at = ? WHERE id = ?",
                            [_stamp(resume_at) if resume_at else None, campaign_id])

    def finish_if_done(self, campaign_id: int) -> bool:
        """Mark the campaign sent when no delivery is left to try."""
        with self.write():
            left = self.db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE campaign_id = ? "
                f"AND status IN ({_OPEN_SQL})",
                [campaign_id],
            ).fetchone()[0]
            if left:
                return False
            self.db.execute(
                "UPDATE campaigns SET status = ?, finished_at = ?, resume_at = NULL, "
                "lease_owner = NULL, lease_until = NULL WHERE id = ? AND status = ?",
                [CampaignStatus.SENT.value, self._now(), campaign_id,
                 CampaignStatus.SENDING.value],
            )
            self._event("campaign.finished", f"campaign {campaign_id}")
            return True

    # --- reading --------------------------------------------------------------

    _CAMPAIGN_SQL = (
        "SELECT c.id, c.issue_id, i.label, c.lists, c.status, c.scheduled_at, c.started_at, "
        "c.finished_at, c.created_at, c.created_by, c.approved_by, c.source_path, c.resume_at, "
        "c.source_sha256, c.status_reason "
        "FROM campaigns c JOIN issues i ON i.id = c.issue_id"
    )

    def _campaign(self, r: Any, counts: dict[str, int]) -> Campaign:
        return Campaign(
            id=r[0], issue_id=r[1], issue_label=r[2], lists=tuple(r[3].split(",")),
            status=CampaignStatus(r[4]), scheduled_at=r[5], started_at=r[6], finished_at=r[7],
            created_at=r[8], created_by=r[9], approved_by=r[10], source_path=r[11],
            resume_at=r[12], source_sha256=r[13], counts=counts, reason=r[14],
        )

    def _counts(self, campaign_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        # One counted range of the (campaign_id, status, …) index per status: half the
        # time of a GROUP BY over the campaign's rows (0.09 s against 0.19 s for a
        # million, which a sender pays before its first message). Every status a row
        # can have is a DeliveryStatus; in the order the GROUP BY gave them.
        out: dict[int, dict[str, int]] = {cid: {} for cid in campaign_ids}
        for cid in out:
            for status in sorted(DeliveryStatus):
                n = self.db.execute(
                    "SELECT COUNT(*) FROM deliveries WHERE campaign_id = ? AND status = ?",
                    [cid, status.value],
                ).fetchone()[0]
                if n:
                    out[cid][status.value] = n
        return out

    def campaign(self, campaign_id: int) -> Campaign:
        r = self.db.execute(self._CAMPAIGN_SQL + " WHERE c.id = ?", [campaign_id]).fetchone()
        if r is None:
            raise UnknownCampaign(campaign_id)
        return self._campaign(r, self._counts([campaign_id])[campaign_id])

    def campaigns(self, *, statuses: Sequence[CampaignStatus] | None = None) -> list[Campaign]:
        sql, params = self._CAMPAIGN_SQL, []
        if statuses:
            sql += f" WHERE c.status IN ({','.join('?' * len(statuses))})"
            params = [s.value for s in statuses]
        rows = self.db.execute(sql + " ORDER BY c.id", params).fetchall()
        counts = self._counts([r[0] for r in rows])
        return [self._campaign(r, counts[r[0]]) for r in rows]

    def deliveries(self, campaign_id: int, *, unit: str | None = None) -> list[Delivery]:
        self.campaign(campaign_id)
        sql = (
            "SELECT d.id, d.campaign_id, d.recipient_id, r.uid, d.email, r.name, u.name, l.slug, "
            "d.status, d.attempts, d.message_id, d.last_code, d.last_response, d.sent_at, "
            "d.updated_at, d.bounce_at, d.bounce_kind, d.bounce_text "
            "FROM deliveries d JOIN recipients r ON r.id = d.recipient_id "
            "JOIN units u ON u.id = r.unit_id JOIN lists l ON l.id = d.list_id "
            "WHERE d.campaign_id = ?"
        )
        params: list[Any] = [campaign_id]
        if unit is not None:
            u = self.get_unit(unit)
            sql += " AND u.id = ?"
            params.append(u.id)
        return [
            Delivery(id=r[0], campaign_id=r[1], recipient_id=r[2], uid=r[3], email=r[4],
                     name=r[5], unit=r[6], list_slug=r[7], status=DeliveryStatus(r[8]),
                     attempts=r[9], message_id=r[10], last_code=r[11], last_response=r[12],
                     sent_at=r[13], updated_at=r[14], bounce_at=r[15], bounce_kind=r[16],
                     bounce_text=r[17])
            for r in self.db.execute(sql + " ORDER BY l.id, u.id, d.email", params)
        ]

    def sent_since(self, since: dt.datetime) -> int:
        """Messages handed to the relay since then (campaigns and test sends): quotas."""
        stamp = _stamp(since)
        a = self.db.execute("SELECT COUNT(*) FROM deliveries WHERE sent_at >= ?",
                            [stamp]).fetchone()[0]
        b = self.db.execute("SELECT COUNT(*) FROM test_sends WHERE at >= ? AND code BETWEEN "
                            "200 AND 299", [stamp]).fetchone()[0]
        return int(a) + int(b)

    def oldest_sent_since(self, since: dt.datetime) -> str | None:
        """When the oldest message still counting against a quota window was sent."""
        r = self.db.execute(
            "SELECT MIN(sent_at) FROM deliveries WHERE sent_at >= ?", [_stamp(since)]
        ).fetchone()
        return r[0] if r else None

    def next_attempt_at(self, campaign_id: int) -> str | None:
        r = self.db.execute(
            "SELECT MIN(COALESCE(next_attempt_at, '')) FROM deliveries "
            "WHERE campaign_id = ? AND status IN ('pending', 'deferred')",
            [campaign_id],
        ).fetchone()
        return r[0] if r and r[0] is not None else None

    # --- sending --------------------------------------------------------------

    def take_over(self, campaign_id: int, owner: str) -> None:
        """Become the campaign's sender. Called only under the campaign's kernel lock
        (``mailer.locks``), so no other sender is alive: the replies a previous one
        journaled (``store.journal``) are recorded first, then rows it left in flight
        (a crash) go back to pending. They may have gone out (a bounded duplicate,
        same Message-ID), but none is lost."""
        from .journal import journal_files, journal_path, read_journal

        journal = journal_path(self.path, campaign_id)
        self._cursors.pop(campaign_id, None)
        with self.write():
            for at, results in read_journal(journal):
                self.record_results(results, at=at)
            r = self.db.execute("SELECT status FROM campaigns WHERE id = ?",
                                [campaign_id]).fetchone()
            if r is None:
                raise UnknownCampaign(campaign_id)
            if r[0] != CampaignStatus.SENDING.value:
                raise CampaignNotSending(campaign_id, r[0])
            self.db.execute(
                "UPDATE campaigns SET lease_owner = ?, lease_until = NULL WHERE id = ?",
                [owner, campaign_id],
            )
            self.db.execute(
                "UPDATE deliveries SET status = 'pending', updated_at = ? "
                "WHERE campaign_id = ? AND status = 'sending'",
                [self._now(), campaign_id],
            )
        for segment in journal_files(journal):
            if segment.is_file():
                segment.unlink()  # recorded: applying it again would change nothing

    def release(self, campaign_id: int, owner: str) -> None:
        with self.write():
            self.db.execute(
                "UPDATE campaigns SET lease_owner = NULL WHERE id = ? AND lease_owner = ?",
                [campaign_id, owner],
            )

    def holds(self, campaign_id: int, owner: str) -> bool:
        """The campaign is still ``owner``'s to send: not paused or cancelled."""
        return self.db.execute(
            "SELECT 1 FROM campaigns WHERE id = ? AND lease_owner = ? AND status = 'sending'",
            [campaign_id, owner],
        ).fetchone() is not None

    def claim(self, campaign_id: int, owner: str, limit: int, now: dt.datetime
              ) -> list[Job] | None:
        """Take up to ``limit`` deliveries that are due; None when the campaign is no
        longer ours to send (paused, cancelled). Rows whose subscription stopped
        meanwhile (an unsubscribe during the campaign) are marked unsubscribed here
        instead of being sent.

        Rows never tried are taken in order of id after the last one this store took
        (``_cursors``), and left as they are: their attempt is written with their
        reply (``record_results``). A row claimed stays pending until then, so that
        a crash leaves nothing to undo, and the claim costs one UPDATE per row less
        (a quarter of the database thread's work per message). Rows with a time, the
        retries, are marked ``sending`` as before: a cursor cannot pass over them."""
        stamp = _stamp(now)
        with self.write():
            if not self.holds(campaign_id, owner):
                return None
            jobs = self._claimed(_DUE, [campaign_id, stamp, limit], campaign_id, stamp)
            if jobs:
                self.db.conn.execute(
                    "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, "
                    "first_attempt_at = COALESCE(first_attempt_at, ?1), updated_at = ?1 "
                    "WHERE id IN (SELECT value FROM json_each(?2))",
                    [stamp, json.dumps([j.delivery_id for j in jobs])],
                )
            if len(jobs) < limit:
                after = self._cursors.get(campaign_id, 0)
                fresh = self._claimed(_FRESH, [campaign_id, after, limit - len(jobs)],
                                      campaign_id, stamp)
                if fresh:
                    self._cursors[campaign_id] = fresh[-1].delivery_id
                jobs += fresh
            return jobs

    def rewind_claims(self, campaign_id: int) -> None:
        """Claim never-tried rows from the first again (the sender has none in hand)."""
        self._cursors.pop(campaign_id, None)

    def _claimed(self, query: str, params: list[object], campaign_id: int, stamp: str
                 ) -> list[Job]:
        # The batch comes back as one JSON value, and is marked in one statement:
        # each step of SQLite lets go of the GIL, and getting it back from a busy
        # event loop thread costs far more than the step (see _BATCH_RESULTS).
        (found,) = self.db.execute(_CLAIM.format(rows=query), params).fetchone()
        jobs = []
        skipped = []
        active = _ACTIVE  # per row, and this thread holds the GIL: no lookups, no keywords
        for (did, rid, uid, email, email_ascii, name, slug, attempts, first,
             sub_status) in json.loads(found):
            if sub_status != active:
                skipped.append((f"not sent: subscription {sub_status}", stamp, did))
                continue
            jobs.append(Job(did, campaign_id, rid, uid, email, email_ascii, name, slug,
                            attempts + 1, first or stamp))
        self.db.conn.executemany(
            "UPDATE deliveries SET status = 'unsubscribed', last_response = ?, "
            "updated_at = ? WHERE id = ?",
            skipped,
        )
        return jobs

    def unclaim(self, delivery_ids: Sequence[int]) -> None:
        """Give back claimed rows that were never sent (a stop between claim and send),
        as they were before the claim: a row tried before (a retry) is deferred again,
        with its retry time; one never tried is pending."""
        with self.write():
            for did in delivery_ids:
                self.db.execute(
                    "UPDATE deliveries SET attempts = attempts - 1, status = CASE "
                    "WHEN attempts > 1 THEN 'deferred' ELSE 'pending' END "
                    "WHERE id = ? AND status = 'sending'",
                    [did],
                )

    def record_results(self, results: Sequence[DeliveryResult], *, at: str | None = None
                       ) -> None:
        """Record replies in one transaction (a group commit for many connections),
        as of ``at`` (a stamp; default now)."""
        if results:
            self.record_rows(encode_rows(results), [r for r in results if r.bounce], at=at)

    def record_rows(self, rows: str, bounced: Sequence[DeliveryResult], *,
                    at: str | None = None) -> None:
        """``record_results`` for replies already in JSON (``encode_rows``, as the reply
        journal has them: a sender's commits take its journal's text, not encoding
        every reply a second time); ``bounced``, those of them that are bounces."""
        now = at or self._now()
        with self.write():
            self.db.conn.execute(_BATCH_RESULTS, [now, rows])
            for res in bounced:
                self._bounce(res.delivery_id, res.code, res.response)

    def _bounce(self, delivery_id: int, code: int, response: str) -> None:
        r = self.db.execute(
            "SELECT d.recipient_id, d.list_id, d.email, u.name, l.slug, s.status, l.role "
            "FROM deliveries d JOIN recipients r ON r.id = d.recipient_id "
            "JOIN units u ON u.id = r.unit_id JOIN lists l ON l.id = d.list_id "
            "JOIN subscriptions s ON s.recipient_id = d.recipient_id AND s.list_id = d.list_id "
            "WHERE d.id = ?",
            [delivery_id],
        ).fetchone()
        if r is None or r[5] != Status.ACTIVE.value:
            return
        rid, lid, email, unit, slug, _, role = r
        if Role(role) is Role.REPORT_TO:
            # An official recipient is fixed by a person, never stopped by a machine
            # (the same rule as for bounces that come back by mail).
            self._event("bounce.flagged", email, unit=unit, list_slug=slug, actor="smtp",
                        reply=f"{code} {response}"[:300],
                        note="report-to body: check and fix the address by hand")
            return
        self.db.execute(
            "UPDATE subscriptions SET status = 'bounced', changed_at = ?, source = 'smtp' "
            "WHERE recipient_id = ? AND list_id = ?",
            [self._now(), rid, lid],
        )
        self._event("subscription.status", email, unit=unit, list_slug=slug, actor="smtp",
                    before={"status": "active"}, after={"status": "bounced"}, source="smtp",
                    reason=f"{code} {response}"[:300])

    def test_sends(self) -> list[list[object]]:
        """Test copies: at, email, list, code, response, message id (oldest first)."""
        return [list(r) for r in self.db.execute(
            "SELECT at, email, list_slug, code, response, message_id FROM test_sends ORDER BY id")]

    def record_test_send(
        self, *, issue_id: int, list_slug: str, email: str, code: int, response: str,
        message_id: str,
    ) -> None:
        with self.write():
            self.db.execute(
                "INSERT INTO test_sends (issue_id, list_slug, email, at, actor, code, response, "
                "message_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [issue_id, list_slug, email, self._now(), self.actor, code, response[:500],
                 message_id],
            )
