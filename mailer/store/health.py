"""What `mailer doctor` asks of a database file without changing it.

``Store.open`` brings an old schema up to date as it opens; the doctor must only
look, so it opens the file read-only and asks the migrations what is pending.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from .schema import MIGRATIONS


@dataclass(frozen=True)
class SchemaState:
    pending: tuple[str, ...]  # migrations not yet applied, in order
    has_lists: bool  # `mailer init` has run


def schema_state(path: Path) -> SchemaState:
    """The schema of an existing file, read-only; ``sqlite3.DatabaseError`` when it
    is not a SQLite database at all."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        db = Database(conn)
        pending = tuple(m.name for m in MIGRATIONS.pending(db))
        return SchemaState(pending, db["lists"].exists())
    finally:
        conn.close()
