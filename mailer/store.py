"""The SQLite store: every table and every SQL statement of mailer lives here.

Concurrency model: WAL (readers never block the writer), a busy timeout of several
seconds, and ``BEGIN IMMEDIATE`` for every transaction that writes. A plain
``BEGIN`` takes the write lock only at the first write, and a transaction that read
first and then finds another writer fails at once with "database is locked",
whatever the timeout; IMMEDIATE waits for the lock up front instead. The
connection runs in autocommit mode so that no statement opens a transaction
behind our back; sqlite-utils' own ``atomic()`` blocks nest inside ours as
savepoints.

Rows are never deleted: a subscription's status says why mail stops.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlite_utils import Database, Migrations

from .config import ListConfig
from .errors import (
    InvalidInput,
    NotInitialised,
    StoreError,
    UnknownList,
    UnknownRecipient,
    UnknownUnit,
)
from .models import Event, MailingList, Member, Role, Status, Unit, UnitKind
from .validate import Address, normalise_email

BUSY_TIMEOUT_S = 10.0
Clock = Callable[[], dt.datetime]

MIGRATIONS = Migrations("mailer")


@MIGRATIONS()
def m001_recipients(db: Database) -> None:
    db.table("units").create(
        {"id": int, "name": str, "kind": str, "group_name": str, "created_at": str},
        pk="id",
        not_null={"name", "kind", "created_at"},
    )
    db.table("units").create_index(["name"], unique=True)
    db.table("recipients").create(
        {
            "id": int,
            "email": str,
            "email_ascii": str,
            "name": str,
            "unit_id": int,
            "created_at": str,
        },
        pk="id",
        not_null={"email", "unit_id", "created_at"},
        foreign_keys=[("unit_id", "units", "id")],
    )
    db.table("recipients").create_index(["email"], unique=True)
    db.table("recipients").create_index(["unit_id"])
    db.table("lists").create(
        {
            "id": int,
            "slug": str,
            "role": str,
            "title": str,
            "footer_label": str,
            "allow_unsubscribe": int,
            "collective_label": str,
        },
        pk="id",
        not_null={"slug", "role", "title", "footer_label", "allow_unsubscribe"},
    )
    db.table("lists").create_index(["slug"], unique=True)
    db.table("subscriptions").create(
        {
            "recipient_id": int,
            "list_id": int,
            "status": str,
            "changed_at": str,
            "source": str,
        },
        pk=("recipient_id", "list_id"),
        not_null={"status", "changed_at", "source"},
        foreign_keys=[("recipient_id", "recipients", "id"), ("list_id", "lists", "id")],
    )
    db.table("subscriptions").create_index(["list_id", "status"])
    db.table("events").create(
        {
            "id": int,
            "at": str,
            "actor": str,
            "kind": str,
            "subject": str,
            "unit": str,
            "list": str,
            "detail": str,
        },
        pk="id",
        not_null={"at", "actor", "kind", "subject"},
    )
    db.table("events").create_index(["subject"])
    db.table("events").create_index(["unit"])


def default_actor() -> str:
    """Who is at the keyboard, for the audit trail."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _create_private_file(path: Path) -> None:
    # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
    # database file's permissions, so addresses are never world-readable.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)


def _connect(path: Path) -> Database:
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path}: cannot open the database: {e}") from None
    return Database(conn)


@dataclass
class ImportRow:
    """One validated row of a recipients file."""

    line: int
    address: Address
    name: str | None
    unit: str
    group: str | None


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    notes: list[str] = field(default_factory=list)  # rows kept as they are, and why
    dry_run: bool = False


class Store:
    """A handle on one mailer database. Use ``Store.open`` or ``Store.init``."""

    def __init__(self, db: Database, path: Path, *, clock: Clock = utc_now, actor: str) -> None:
        self.db = db
        self.path = path
        self.clock = clock
        self.actor = actor

    # --- opening --------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, clock: Clock = utc_now, actor: str | None = None) -> Store:
        """Open an initialised database; brings its schema up to date."""
        if not path.exists():
            raise NotInitialised(
                f"{path}: no database here; run `mailer init` to create it "
                "(or check database.path in the config)"
            )
        store = cls(_connect(path), path, clock=clock, actor=actor or default_actor())
        store._migrate()
        if not store.db["lists"].exists():
            raise NotInitialised(f"{path}: the database has no lists; run `mailer init`")
        return store

    @classmethod
    def init(
        cls,
        path: Path,
        lists: Iterable[ListConfig],
        *,
        clock: Clock = utc_now,
        actor: str | None = None,
    ) -> Store:
        """Create the database if needed (mode 0600) and make its lists match the config."""
        if not path.exists():
            try:
                _create_private_file(path)
            except OSError as e:
                raise StoreError(f"{path}: cannot create the database: {e.strerror}") from None
        store = cls(_connect(path), path, clock=clock, actor=actor or default_actor())
        store._migrate()
        store.sync_lists(lists)
        return store

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        try:
            if not MIGRATIONS.pending(self.db):
                return
            with self.write():
                MIGRATIONS.apply(self.db)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: not a mailer database ({e})") from None

    # --- transactions ---------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[Database]:
        """One writing transaction, started with BEGIN IMMEDIATE."""
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise StoreError(
                f"{self.path}: the database stayed busy for {BUSY_TIMEOUT_S:.0f} s "
                f"(another mailer process is writing); try again ({e})"
            ) from None
        try:
            yield self.db
        except sqlite3.OperationalError as e:
            # Disk full, I/O errors, a lock lost: nothing of the change is kept.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"{self.path}: could not save the change: {e}") from None
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"{self.path}: could not save the change: {e}") from None

    def _now(self) -> str:
        return _stamp(self.clock())

    def _event(
        self,
        kind: str,
        subject: str,
        *,
        unit: str | None = None,
        list_slug: str | None = None,
        actor: str | None = None,
        **detail: Any,
    ) -> None:
        self.db.execute(
            "INSERT INTO events (at, actor, kind, subject, unit, list, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                self._now(),
                actor or self.actor,
                kind,
                subject,
                unit,
                list_slug,
                json.dumps(detail, ensure_ascii=False, sort_keys=True),
            ],
        )

    # --- lists ----------------------------------------------------------------

    def sync_lists(self, configured: Iterable[ListConfig]) -> None:
        with self.write():
            for lc in configured:
                row = {
                    "role": lc.role.value,
                    "title": lc.title,
                    "footer_label": lc.footer_label,
                    "allow_unsubscribe": int(lc.allow_unsubscribe),
                    "collective_label": lc.collective_label,
                }
                cur = self.db.execute(
                    "SELECT role, title, footer_label, allow_unsubscribe, collective_label "
                    "FROM lists WHERE slug = ?",
                    [lc.slug],
                ).fetchone()
                if cur is None:
                    self.db.execute(
                        "INSERT INTO lists (slug, role, title, footer_label, allow_unsubscribe, "
                        "collective_label) VALUES (?, ?, ?, ?, ?, ?)",
                        [lc.slug, *row.values()],
                    )
                    self._event("list.created", lc.slug, list_slug=lc.slug, after=row)
                elif tuple(cur) != tuple(row.values()):
                    before = dict(zip(row, cur, strict=True))
                    self.db.execute(
                        "UPDATE lists SET role = ?, title = ?, footer_label = ?, "
                        "allow_unsubscribe = ?, collective_label = ? WHERE slug = ?",
                        [*row.values(), lc.slug],
                    )
                    self._event(
                        "list.changed", lc.slug, list_slug=lc.slug, before=before, after=row
                    )

    def lists(self) -> list[MailingList]:
        rows = self.db.execute(
            "SELECT id, slug, role, title, footer_label, allow_unsubscribe FROM lists ORDER BY id"
        ).fetchall()
        return [
            MailingList(id=r[0], slug=r[1], role=Role(r[2]), title=r[3], footer_label=r[4],
                        allow_unsubscribe=bool(r[5]))
            for r in rows
        ]

    def get_list(self, slug: str) -> MailingList:
        known = self.lists()
        for ml in known:
            if ml.slug == slug:
                return ml
        raise UnknownList(slug, [ml.slug for ml in known])

    # --- units ----------------------------------------------------------------

    def _unit_row(self, name: str) -> Unit | None:
        r = self.db.execute(
            "SELECT id, name, kind, group_name FROM units WHERE name = ?", [name]
        ).fetchone()
        return Unit(id=r[0], name=r[1], kind=UnitKind(r[2]), group=r[3]) if r else None

    def get_unit(self, name: str) -> Unit:
        unit = self._unit_row(name.strip())
        if unit is None:
            raise UnknownUnit(name)
        return unit

    def units(self) -> list[tuple[Unit, dict[str, int]]]:
        """Every unit with its count of active addresses per list slug."""
        rows = self.db.execute(
            "SELECT u.id, u.name, u.kind, u.group_name, l.slug, COUNT(s.recipient_id) "
            "FROM units u "
            "LEFT JOIN recipients r ON r.unit_id = u.id "
            "LEFT JOIN subscriptions s ON s.recipient_id = r.id AND s.status = 'active' "
            "LEFT JOIN lists l ON l.id = s.list_id "
            "GROUP BY u.id, l.slug"
        ).fetchall()
        out: dict[int, tuple[Unit, dict[str, int]]] = {}
        for uid, name, kind, group, slug, n in rows:
            _, counts = out.setdefault(
                uid, (Unit(id=uid, name=name, kind=UnitKind(kind), group=group), {})
            )
            if slug is not None:
                counts[slug] = n
        # Within a 片组, units stay in the order staff entered them: for superior
        # bodies that is the protocol order of the 报 line (省 before 市).
        return sorted(out.values(), key=lambda uc: (uc[0].kind, group_order(uc[0].group), uc[0].id))

    def _create_unit(self, name: str, kind: UnitKind, group: str | None) -> Unit:
        cur = self.db.execute(
            "INSERT INTO units (name, kind, group_name, created_at) VALUES (?, ?, ?, ?)",
            [name, kind.value, group, self._now()],
        )
        self._event("unit.created", name, unit=name, after={"kind": kind.value, "group": group})
        assert cur.lastrowid is not None
        return Unit(id=cur.lastrowid, name=name, kind=kind, group=group)

    # --- recipients -----------------------------------------------------------

    def add_recipient(
        self,
        address: Address,
        *,
        list_slug: str,
        unit: str,
        name: str | None = None,
        group: str | None = None,
        create_unit: bool = False,
    ) -> None:
        """Put one address on a list (staff's `recipients add`). Refuses duplicates,
        unknown units (unless ``create_unit``) and moving an address between units."""
        with self.write():
            ml = self.get_list(list_slug)
            u = self._unit_row(unit)
            if u is None:
                if not create_unit:
                    raise InvalidInput(
                        f"unknown unit {unit!r}; check the name in `mailer units list`, "
                        "or add --create-unit to create it"
                    )
                u = self._create_unit(unit, _kind_for(ml.role), group)
            self._put(ml, u, address, name, strict=True, report=None)

    def import_rows(self, rows: list[ImportRow], *, list_slug: str, dry_run: bool) -> ImportReport:
        """Apply validated rows in one transaction: all or nothing. Importing the same
        rows again changes nothing; a stopped subscription is never revived by an import."""
        report = ImportReport(dry_run=dry_run)
        try:
            with self.write():
                ml = self.get_list(list_slug)
                for row in rows:
                    u = self._unit_row(row.unit)
                    if u is None:
                        u = self._create_unit(row.unit, _kind_for(ml.role), row.group)
                    elif row.group and row.group != u.group:
                        self.db.execute(
                            "UPDATE units SET group_name = ? WHERE id = ?", [row.group, u.id]
                        )
                        self._event("unit.changed", u.name, unit=u.name,
                                    before={"group": u.group}, after={"group": row.group})
                        u = Unit(id=u.id, name=u.name, kind=u.kind, group=row.group)
                    self._put(ml, u, row.address, row.name, strict=False, report=report,
                              line=row.line)
                if report.added or report.updated:
                    self._event("recipients.imported", list_slug, list_slug=list_slug,
                                added=report.added, updated=report.updated,
                                unchanged=report.unchanged)
                if dry_run:
                    raise _DryRun
        except _DryRun:
            pass
        return report

    def _put(
        self,
        ml: MailingList,
        unit: Unit,
        address: Address,
        name: str | None,
        *,
        strict: bool,
        report: ImportReport | None,
        line: int = 0,
    ) -> None:
        """The one place an address joins a list; strict for `add`, lenient for imports."""
        email = address.email
        where = f"line {line}: " if line else ""
        r = self.db.execute(
            "SELECT r.id, r.name, r.unit_id, u.name FROM recipients r "
            "JOIN units u ON u.id = r.unit_id WHERE r.email = ?",
            [email],
        ).fetchone()
        changed = False
        if r is None:
            cur = self.db.execute(
                "INSERT INTO recipients (email, email_ascii, name, unit_id, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [email, address.ascii, name, unit.id, self._now()],
            )
            rid = cur.lastrowid
            self._event("recipient.created", email, unit=unit.name, after={"name": name})
        else:
            rid, old_name, old_unit_id, old_unit = r
            if old_unit_id != unit.id:
                if strict:
                    raise InvalidInput(
                        f"{email} belongs to unit {old_unit!r}, not {unit.name!r}; "
                        f"use --unit {old_unit!r}"
                    )
                self.db.execute("UPDATE recipients SET unit_id = ? WHERE id = ?", [unit.id, rid])
                self._event("recipient.moved", email, unit=unit.name,
                            before={"unit": old_unit}, after={"unit": unit.name})
                assert report is not None
                report.notes.append(f"{where}{email} moved from {old_unit} to {unit.name}")
                changed = True
            if name and name != old_name:
                self.db.execute("UPDATE recipients SET name = ? WHERE id = ?", [name, rid])
                self._event("recipient.renamed", email, unit=unit.name,
                            before={"name": old_name}, after={"name": name})
                changed = True
        s = self.db.execute(
            "SELECT status, changed_at, source FROM subscriptions "
            "WHERE recipient_id = ? AND list_id = ?",
            [rid, ml.id],
        ).fetchone()
        if s is None:
            self.db.execute(
                "INSERT INTO subscriptions (recipient_id, list_id, status, changed_at, source) "
                "VALUES (?, ?, 'active', ?, ?)",
                [rid, ml.id, self._now(), "import" if report else "staff"],
            )
            self._event("subscription.added", email, unit=unit.name, list_slug=ml.slug,
                        after={"status": Status.ACTIVE.value})
            if report:
                report.added += 1
            return
        status = Status(s[0])
        if strict:
            if status is Status.ACTIVE:
                raise InvalidInput(f"{email} is already on the {ml.slug} list")
            raise InvalidInput(
                f"{email} is on the {ml.slug} list with status {status.value} since {s[1]} "
                f"({s[2]}); to send to it again use `mailer recipients resubscribe {email} "
                f"--list {ml.slug} --reason TEXT`"
            )
        assert report is not None
        if status is not Status.ACTIVE:
            report.notes.append(
                f"{where}{email} kept {status.value} on {ml.slug} (since {s[1]}, {s[2]})"
            )
        if changed:
            report.updated += 1
        else:
            report.unchanged += 1

    def members(
        self,
        *,
        list_slug: str | None = None,
        unit: str | None = None,
        status: Status | None = None,
    ) -> list[Member]:
        where: list[str] = []
        params: list[Any] = []
        if list_slug is not None:
            self.get_list(list_slug)
            where.append("l.slug = ?")
            params.append(list_slug)
        if unit is not None:
            self.get_unit(unit)
            where.append("u.name = ?")
            params.append(unit.strip())
        if status is not None:
            where.append("s.status = ?")
            params.append(status.value)
        sql = (
            "SELECT r.id, r.email, r.name, u.name, u.group_name, l.slug, s.status, "
            "s.changed_at, s.source FROM subscriptions s "
            "JOIN recipients r ON r.id = s.recipient_id "
            "JOIN units u ON u.id = r.unit_id JOIN lists l ON l.id = s.list_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY l.id, u.id, r.email"
        )
        found = [
            Member(recipient_id=r[0], email=r[1], name=r[2], unit=r[3], group=r[4],
                   list_slug=r[5], status=Status(r[6]), changed_at=r[7], source=r[8])
            for r in self.db.execute(sql, params).fetchall()
        ]
        # Stable sort keeps the SQL order (list, unit as entered, address) within a 片组.
        rank = {slug: i for i, slug in enumerate(dict.fromkeys(m.list_slug for m in found))}
        return sorted(found, key=lambda m: (rank[m.list_slug], group_order(m.group)))

    def set_status(
        self,
        email: str,
        new: Status,
        *,
        list_slug: str | None,
        source: str,
        reason: str | None = None,
        only_from: tuple[Status, ...] | None = None,
        actor: str | None = None,
    ) -> list[str]:
        """Change an address's status on one list (or all its lists); returns the slugs
        changed. ``only_from`` limits which current statuses may change."""
        address = normalise_email(email)
        with self.write():
            r = self.db.execute(
                "SELECT r.id, u.name FROM recipients r JOIN units u ON u.id = r.unit_id "
                "WHERE r.email = ?",
                [address.email],
            ).fetchone()
            if r is None:
                raise UnknownRecipient(address.email)
            rid, unit = r
            if list_slug is not None:
                self.get_list(list_slug)
            subs = self.db.execute(
                "SELECT l.id, l.slug, s.status FROM subscriptions s "
                "JOIN lists l ON l.id = s.list_id WHERE s.recipient_id = ?"
                + (" AND l.slug = ?" if list_slug else ""),
                [rid, list_slug] if list_slug else [rid],
            ).fetchall()
            if not subs:
                raise InvalidInput(
                    f"{address.email} is not on the {list_slug or 'any'} list"
                )
            changed = []
            for lid, slug, status in subs:
                if status == new.value or (only_from and Status(status) not in only_from):
                    continue
                self.db.execute(
                    "UPDATE subscriptions SET status = ?, changed_at = ?, source = ? "
                    "WHERE recipient_id = ? AND list_id = ?",
                    [new.value, self._now(), source, rid, lid],
                )
                self._event("subscription.status", address.email, unit=unit, list_slug=slug,
                            actor=actor, before={"status": status},
                            after={"status": new.value}, source=source, reason=reason)
                changed.append(slug)
            if not changed:
                states = ", ".join(f"{slug}: {st}" for _, slug, st in subs)
                raise InvalidInput(f"nothing to change for {address.email} ({states})")
            return changed

    # --- audit trail ----------------------------------------------------------

    def history(self, subject: str | None = None, *, limit: int = 500) -> list[Event]:
        """Events about an address or a unit (and its addresses), newest last."""
        params: list[Any]
        if subject is None:
            sql, params = "SELECT * FROM events ORDER BY id DESC LIMIT ?", [limit]
        elif self._unit_row(subject.strip()) is not None:
            sql = "SELECT * FROM events WHERE unit = ? ORDER BY id DESC LIMIT ?"
            params = [subject.strip(), limit]
        else:
            try:
                email = normalise_email(subject).email
            except InvalidInput:
                raise InvalidInput(
                    f"{subject!r} is neither a unit on file nor an email address"
                ) from None
            sql = "SELECT * FROM events WHERE subject = ? ORDER BY id DESC LIMIT ?"
            params = [email, limit]
            if not self.db.execute("SELECT 1 FROM recipients WHERE email = ?", [email]).fetchone():
                raise UnknownRecipient(email)
        rows = self.db.execute(sql, params).fetchall()
        return [
            Event(id=r[0], at=r[1], actor=r[2], kind=r[3], subject=r[4], unit=r[5],
                  list=r[6], detail=json.loads(r[7] or "{}"))
            for r in reversed(rows)
        ]


_CN_DIGITS = {ch: i for i, ch in enumerate("〇一二三四五六七八九")} | {"两": 2}


def _number_in(text: str) -> int | None:
    """The first number written in ``text``, in Arabic or Chinese numerals (第十二片组: 12)."""
    digits = "".join(ch for ch in text if ch.isdigit() and ch.isascii())
    if digits:
        return int(digits)
    total, current, seen = 0, 0, False
    for ch in text:
        if ch in _CN_DIGITS:
            current, seen = _CN_DIGITS[ch], True
        elif ch == "十":
            total += (current or 1) * 10
            current, seen = 0, True
        elif seen:
            break
    return total + current if seen else None


def group_order(group: str | None) -> tuple[int, int, str]:
    """片组 in their numbered order (第二 before 第十), units without one last."""
    if group is None:
        return (1, 0, "")
    n = _number_in(group)
    return (0, n if n is not None else 10**6, group)


class _DryRun(Exception):
    """Raised inside the import transaction to roll a dry run back."""


def _kind_for(role: Role) -> UnitKind:
    return UnitKind.AUTHORITY if role is Role.REPORT_TO else UnitKind.MEMBER
