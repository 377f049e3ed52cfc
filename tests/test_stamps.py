"""Stored times: one width, to the millisecond, and old databases brought up to it."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

from mailer.stamps import parse_stamp, stamp
from mailer.store import Store

from .conftest import Run


def test_stamps_keep_milliseconds_and_sort_as_text() -> None:
    t = dt.datetime(2015, 11, 24, 1, 0, 0, 999_999, tzinfo=dt.UTC)
    assert stamp(t) == "2015-11-24T01:00:00.999Z"
    assert parse_stamp(stamp(t)) <= t < parse_stamp(stamp(t)) + dt.timedelta(milliseconds=1)
    times = [t + dt.timedelta(milliseconds=n) for n in (0, 1, 999, 1000, 61_000)]
    assert sorted(stamp(x) for x in reversed(times)) == [stamp(x) for x in times]
    assert parse_stamp("2015-11-24T01:00:00Z") == t.replace(microsecond=0)  # old form


def test_an_old_database_gets_millisecond_stamps(run: Run, initialised: Path) -> None:
    """A database written with second-only stamps: opening it rewrites them all to the
    one width, so a retry due at 09:00:00.500 is not taken for due at 09:00:00Z."""
    run("recipients", "add", "a@example.org", "--list", "send-to", "--unit", "万向集团",
        "--create-unit")
    conn = sqlite3.connect(initialised)
    with conn:
        conn.execute("UPDATE events SET at = '2015-11-24T01:00:00Z'")
        conn.execute("UPDATE subscriptions SET changed_at = '2015-11-24T01:00:01Z'")
        conn.execute("UPDATE units SET name = '2015-11-24T01:00:00Z 单位' WHERE id = 1")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm006_millisecond_stamps'")
    conn.close()
    with Store.open(initialised):
        pass
    conn = sqlite3.connect(initialised)
    try:
        assert {r[0] for r in conn.execute("SELECT at FROM events")} == {
            "2015-11-24T01:00:00.000Z"}
        assert {r[0] for r in conn.execute("SELECT changed_at FROM subscriptions")} == {
            "2015-11-24T01:00:01.000Z"}
        # Only values that are exactly a stamp change.
        assert conn.execute("SELECT name FROM units WHERE id = 1").fetchone()[0] == \
            "2015-11-24T01:00:00Z 单位"
    finally:
        conn.close()
