"""The connection, transactions and audit events every part of the store shares.

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
from pathlib import Path
from typing import Any, Self

from sqlite_utils import Database

from ..clock import utc_now
from ..config import ListConfig
from ..errors import NotInitialised, StoreError, UnknownList, UnknownUnit
from ..models import MailingList, Role, Unit, UnitKind
from ..stamps import stamp
from .schema import MIGRATIONS

BUSY_TIMEOUT_S = 10.0
# What the store reads the time with (for its stamps): ``Clock.now`` of mailer.clock.
Now = Callable[[], dt.datetime]

def default_actor() -> str:
    """Who is at the keyboard, for the audit trail."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"




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


class StoreBase:
    """Connection, transactions, audit events and lists; ``Store`` adds the rest."""

    def __init__(self, db: Database, path: Path, *, clock: Now = utc_now, actor: str) -> None:
        self.db = db
        self.path = path
        self.clock = clock
        self.actor = actor
        # Per campaign, the last never-tried delivery this store claimed (``claim``).
        self._cursors: dict[int, int] = {}

    # --- opening --------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, clock: Now = utc_now, actor: str | None = None) -> Self:
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
        clock: Now = utc_now,
        actor: str | None = None,
    ) -> Self:
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

    def __enter__(self) -> Self:
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
        """One writing transaction, started with BEGIN IMMEDIATE. Inside another one
        (a step run before a new campaign commits) it is a savepoint of it: kept only
        if the outer transaction commits, undone alone if it raises."""
        conn = self.db.conn
        if conn.in_transaction:
            with self._savepoint(conn):
                yield self.db
            return
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
            hint = ("; free some disk space and run the command again (a campaign continues "
                    "with `mailer send --resume`)" if "full" in str(e) else "")
            raise StoreError(f"{self.path}: could not save the change: {e}{hint}") from None
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

    @staticmethod
    @contextlib.contextmanager
    def _savepoint(conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("SAVEPOINT nested_write")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK TO nested_write")
            conn.execute("RELEASE nested_write")
            raise
        conn.execute("RELEASE nested_write")

    def _now(self) -> str:
        return stamp(self.clock())

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

    # --- units (looked up by every part of the store) --------------------------

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
