"""Starting a campaign: its delivery rows, its web edition and its PDF edition are one
transaction. The PDF is typeset by real WeasyPrint in a child process while the rows
are written; a typeset that fails leaves no campaign, no delivery and no PDF, with the
same one-line error as ever. A real SQLite file throughout."""

from __future__ import annotations

import datetime as dt
import io
import os
import signal
import sqlite3
from pathlib import Path

import pdfplumber
import pytest

from mailer import campaigns
from mailer import config as config_mod
from mailer.errors import AlreadySent, InvalidInput
from mailer.pdf import PdfFailed, PdfUnavailable, Typesetting, typeset_runs
from mailer.render import render_print
from mailer.store import Store

from .conftest import Run, assert_one_line_error, snapshot
from .edition_setup import import_lists, issue_file
from .sample_issue import sample_issue
from .test_pdf_mail import article_titles_in, set_pdf
from .test_web import secrets_env  # noqa: F401 (fixture)

CHILD = "_child_main"


def typesetting_children() -> list[int]:
    """Our typesetting child processes still alive (or not yet reaped)."""
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[1] == me and CHILD.encode() in cmdline:
            found.append(int(entry.name))
    return found


def counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("campaigns", "deliveries", "issue_pdfs")}
    finally:
        conn.close()


def linked_for_send_to(run: Run, config_file: Path) -> config_mod.Config:
    """The sample lists imported; send-to's email links the PDF edition."""
    set_pdf(config_file, send_to="link")
    import_lists(run)
    return config_mod.load(config_file)


def test_the_pdf_typeset_beside_the_rows_commits_with_the_campaign(
    initialised: Path, run: Run, config_file: Path, tmp_path: Path,
) -> None:
    set_pdf(config_file)  # the defaults: attach for report-to, link for send-to
    import_lists(run)
    config = config_mod.load(config_file)
    before = typeset_runs.count
    with Store.open(config.database) as store:
        prepared = campaigns.prepare(config, store, issue_file(tmp_path, 9),
                                     ("report-to", "send-to"))
        cid = campaigns.start(config, store, prepared)
        # The connection is left as it was opened: keys checked, checkpoints automatic.
        assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
        stored = store.issue_pdf(prepared.outbox.issue_id or 0)
        attached = prepared.outbox.parts("report-to").attachments
        rows = store.deliveries(cid)
    assert typeset_runs.count - before == 1, "one typeset for the issue, in the child"
    assert stored is not None and stored[1].startswith(b"%PDF-")
    assert [a.data for a in attached] == [stored[1]], "the mail attaches the stored PDF"
    where = article_titles_in(stored[1])
    assert len(where) == 5 and all(w >= 0 for w in where), where
    assert len(rows) == sum(prepared.audience.values()) > 0
    assert typesetting_children() == []


@pytest.fixture
def weasyprint_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """WeasyPrint as it fails on a machine without pango: its import raises OSError
    (cffi cannot open the library). First on the path, which the typesetting child
    takes from this process; only the child imports it."""
    fake = tmp_path / "no-pango"
    fake.mkdir()
    (fake / "weasyprint.py").write_text(
        "raise OSError(\"cannot load library 'libpango-1.0-0': no such file\")\n",
        encoding="utf-8")
    monkeypatch.syspath_prepend(str(fake))


def test_a_typeset_that_fails_leaves_no_campaign_no_rows_and_no_pdf(
    initialised: Path, run: Run, config_file: Path, tmp_path: Path,
    weasyprint_missing: None,
) -> None:
    config = linked_for_send_to(run, config_file)
    with Store.open(config.database) as store:
        prepared = campaigns.prepare(config, store, issue_file(tmp_path, 9), ("send-to",))
        with pytest.raises(PdfUnavailable) as e:
            campaigns.start(config, store, prepared)
    assert "cannot make PDFs" in str(e.value) and "libpango" in str(e.value)
    assert "make system-deps" in str(e.value)
    assert counts(initialised) == {"campaigns": 0, "deliveries": 0, "issue_pdfs": 0}
    assert typesetting_children() == []


def test_a_typeset_that_fails_is_one_line_from_mailer_send(
    initialised: Path, run: Run, config_file: Path, tmp_path: Path,
    weasyprint_missing: None,
) -> None:
    set_pdf(config_file)  # report-to attaches: its message waits for the PDF too
    import_lists(run)
    before = snapshot(initialised)
    result = run("send", str(issue_file(tmp_path, 9)), "--yes", ok=False)
    assert_one_line_error(result, "cannot make PDFs", "make system-deps")
    after = snapshot(initialised)
    assert after["campaigns"] == [] and after["deliveries"] == []
    assert after["issue_pdfs"] == []
    # The lists and their members are as they were (the issue row and its web pages
    # may be written first, as before: they are the issue's, not a campaign's).
    for table in ("units", "recipients", "lists", "subscriptions"):
        assert after[table] == before[table], table


def test_a_repeat_refused_ends_its_typesetting_and_keeps_the_stored_pdf(
    initialised: Path, run: Run, config_file: Path, tmp_path: Path,
) -> None:
    config = linked_for_send_to(run, config_file)
    with Store.open(config.database) as store:
        prepared = campaigns.prepare(config, store, issue_file(tmp_path, 9), ("send-to",))
        campaigns.start(config, store, prepared)
        issue_id = prepared.outbox.issue_id or 0
        first = store.issue_pdf(issue_id)
        # Edited: another print HTML, so another typeset starts, and the repeat is
        # refused only once the rows would be written.
        edited = issue_file(tmp_path, 9, extra_article="补充说明")
        again = campaigns.prepare(config, store, edited, ("send-to",))
        with pytest.raises(AlreadySent):
            campaigns.start(config, store, again)
        assert store.issue_pdf(issue_id) == first
    assert counts(initialised)["campaigns"] == 1
    assert typesetting_children() == []


def test_a_typesetting_child_that_dies_is_a_clear_error() -> None:
    from mailer.models import Role
    from mailer.render import Audience

    html = render_print(sample_issue(), Audience(
        role=Role.SEND_TO, list_title="简报发送名单", footer_label="发",
        allow_unsubscribe=True, contact="协会秘书处", pdf_link=True))
    job = Typesetting(html)
    os.kill(job.pid, signal.SIGKILL)
    with pytest.raises(PdfFailed) as e:
        job.result()
    assert "exit code -9" in str(e.value) and "try again" in str(e.value)
    assert typesetting_children() == []

    # And one left to finish typesets the real issue.
    pdf = Typesetting(html).result()
    with pdfplumber.open(io.BytesIO(pdf)) as doc:
        assert "简" in "".join(p.extract_text() or "" for p in doc.pages)


def test_rows_written_with_keys_unchecked_still_refuse_an_unknown_issue(
    initialised: Path,
) -> None:
    with Store.open(initialised) as store:
        with pytest.raises(InvalidInput) as e:
            store.create_campaign(999, ["send-to"], source_path=None, sha256="0" * 64)
        assert "issue 999 is not recorded" in str(e.value)
        assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert counts(initialised)["campaigns"] == 0


@pytest.mark.parametrize("when", ["now", "scheduled"])
def test_rows_are_report_to_first_one_per_address_and_only_active_ones(
    initialised: Path, run: Run, when: str,
) -> None:
    import_lists(run)
    # On both lists: one row, as report-to (报). Unsubscribed from send-to: none.
    run("recipients", "add", "dangban@wanxiang.example.org", "--list", "report-to",
        "--unit", "万向集团")
    gone = "dangwei@wahaha.example.org"
    with Store.open(initialised) as store:
        uid = store.uid_of(gone)
        assert uid is not None and store.unsubscribe(uid, "send-to", source="web", actor="t")
        issue_id = store.record_issue(year=2015, number=9, total_number=33, date=None,
                                      label="简报 2015年第9期", sha256="0" * 64)
        audience = store.audience(["send-to", "report-to"])
        cid = store.create_campaign(
            issue_id, ["send-to", "report-to"], source_path=None, sha256="0" * 64,
            scheduled_at=(dt.datetime(2030, 1, 1, tzinfo=dt.UTC) if when == "scheduled"
                          else None))
        if when == "scheduled":
            assert store.deliveries(cid) == []
            assert store.start_campaign(cid) == sum(audience.values())
        assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    conn = sqlite3.connect(initialised)
    try:
        rows = conn.execute(
            "SELECT d.id, d.email, l.slug, d.status FROM deliveries d "
            "JOIN lists l ON l.id = d.list_id WHERE d.campaign_id = ? ORDER BY d.id",
            [cid]).fetchall()
    finally:
        conn.close()
    slugs = [r[2] for r in rows]
    assert slugs == sorted(slugs, key=lambda s: s != "report-to"), "报 rows before 发"
    emails = [r[1] for r in rows]
    assert len(emails) == len(set(emails)) == sum(audience.values())
    assert ("dangban@wanxiang.example.org", "report-to") in {(r[1], r[2]) for r in rows}
    assert gone not in emails
    assert {r[3] for r in rows} == {"pending"}
    assert audience["report-to"] == slugs.count("report-to") > 0
    assert audience["send-to"] == slugs.count("send-to") > 0


def seed_members(store: Store, n: int) -> None:
    """``n`` active members of send-to in one unit, written in SQL as the bench does
    (importing validates every address: slow for thousands)."""
    list_id = store.get_list("send-to").id
    with store.write() as db:
        db.execute("INSERT INTO units (id, name, kind, created_at) "
                   "VALUES (1, '会员单位', 'member', 'x')")
        db.conn.executemany(
            "INSERT INTO recipients (id, uid, email, unit_id, created_at) "
            "VALUES (?, ?, ?, 1, 'x')",
            ((i, f"u{i}", f"r{i:05d}@member.example.org") for i in range(1, n + 1)))
        db.conn.executemany(
            "INSERT INTO subscriptions (recipient_id, list_id, status, changed_at, "
            "source) VALUES (?, ?, 'active', 'x', 'test')",
            ((i, list_id) for i in range(1, n + 1)))


def test_a_readers_issue_is_looked_up_by_index_not_by_a_scan_of_every_row(
    initialised: Path,
) -> None:
    # 20,000 rows over two campaigns of one issue.
    n = 10_000
    with Store.open(initialised) as store:
        issue_id = store.record_issue(year=2015, number=9, total_number=33, date=None,
                                      label="简报 2015年第9期", sha256="0" * 64)
        seed_members(store, n)
        first = store.create_campaign(issue_id, ["send-to"], source_path=None, sha256="0" * 64)
        store.create_campaign(issue_id, ["send-to"], source_path=None, sha256="0" * 64,
                              again=True)
        with store.write() as db:
            db.execute("UPDATE deliveries SET status = 'sent', sent_at = 'x' "
                       "WHERE campaign_id = ? AND recipient_id = ?", [first, n])
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        store.db.conn.set_progress_handler(count, 100)  # called every 100 VM steps
        try:
            assert store.was_sent(n, issue_id, "send-to")
            assert not store.was_sent(n - 1, issue_id, "send-to")
        finally:
            store.db.conn.set_progress_handler(None, 100)
        indexes = dict(store.db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name = 'deliveries'").fetchall())
    # A scan of 20,000 rows takes hundreds of thousands of steps; seeks take dozens.
    assert steps[0] < 20, steps[0]
    assert "idx_deliveries_recipient_id" not in indexes
    assert "WHERE sent_at IS NOT NULL" in indexes["idx_deliveries_sent_at"]


def test_a_write_inside_a_write_is_a_savepoint_of_it(initialised: Path) -> None:
    with Store.open(initialised) as store:
        with store.write() as db:
            db.execute("INSERT INTO units (name, kind, created_at) VALUES ('外层', 'member', 'x')")
            with pytest.raises(InvalidInput), store.write() as inner:
                inner.execute("INSERT INTO units (name, kind, created_at) "
                              "VALUES ('内层', 'member', 'x')")
                raise InvalidInput("undone alone")
            with store.write() as inner:
                inner.execute("INSERT INTO units (name, kind, created_at) "
                              "VALUES ('也在', 'member', 'x')")
        with pytest.raises(InvalidInput), store.write() as db:
            with store.write() as inner:
                inner.execute("INSERT INTO units (name, kind, created_at) "
                              "VALUES ('随外层撤销', 'member', 'x')")
            raise InvalidInput("the outer one undoes the inner one too")
        names = [r[0] for r in store.db.execute("SELECT name FROM units ORDER BY id")]
    assert names == ["外层", "也在"]


def test_the_rows_reach_the_database_file_after_the_commit_without_another_write(
    initialised: Path,
) -> None:
    import time

    with Store.open(initialised) as store:
        seed_members(store, 20_000)
        # Everything so far into the file, so that only the campaign is in the WAL.
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = initialised.stat().st_size
        issue_id = store.record_issue(year=2015, number=9, total_number=33, date=None,
                                      label="简报 2015年第9期", sha256="0" * 64)
        store.create_campaign(issue_id, ["send-to"], source_path=None, sha256="0" * 64)
        # This connection checkpoints no more (its setting is as before, and nothing
        # is written after the campaign), so the file grows only by the background one.
        grown = False
        for _ in range(200):  # at most 10 s
            if initialised.stat().st_size > size + 20_000 * 50:
                grown = True
                break
            time.sleep(0.05)
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    assert grown, "the campaign's rows never reached the database file"
