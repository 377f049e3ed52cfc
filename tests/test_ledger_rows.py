"""The ledger's claim and group commit, field by field, on a real SQLite file.

A claim comes back from SQLite as one JSON value and a commit goes in as one (one
step per batch): whatever a recipient's name or a relay's reply holds must come out
exactly as stored, and each row get exactly its own result.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from mailer import config as config_mod
from mailer.models import DeliveryStatus
from mailer.stamps import stamp
from mailer.store import DeliveryResult, Store
from mailer.store.journal import Journal, journal_files, journal_path

from .conftest import Run
from .test_send import SECRET, prepare

NAMES = ['王"引号"\\反斜杠', "Émile 😀 \u2028", "", "{\"json\": [1]}"]
EXTRA = "email,name,unit,group\n" + "".join(
    f'n{i}@bulk.example.org,"{name.replace(chr(34), chr(34) * 2)}",批量单位{i},第一片组\n'
    for i, name in enumerate(NAMES)
) + "info@例子.中国,国际域名,批量单位9,第一片组\n"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config_mod.ENV_SECRET, SECRET)


def _stored(db: Path, campaign_id: int) -> dict[int, tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return {r[0]: tuple(r) for r in conn.execute(
            "SELECT d.id, d.recipient_id, r.uid, r.email, r.email_ascii, r.name, l.slug, "
            "d.status, d.attempts, d.first_attempt_at, d.next_attempt_at, d.last_code, "
            "d.last_response, d.message_id, d.sent_at FROM deliveries d "
            "JOIN recipients r ON r.id = d.recipient_id JOIN lists l ON l.id = d.list_id "
            "WHERE d.campaign_id = ?", [campaign_id])}
    finally:
        conn.close()


def test_claim_and_commit_keep_every_field_exactly(run: Run, initialised: Path,
                                                   config_file: Path, env: None) -> None:
    s = prepare(run, initialised, config_file, extra=EXTRA)
    before = _stored(s.db, s.campaign_id)
    names = [row[5] or "" for row in before.values()]
    # What the import stored (it has its own rules) holds what JSON must escape.
    assert any('"' in n and "\\" in n for n in names) and any("😀" in n for n in names)
    assert None in {row[5] for row in before.values()}
    assert any(row[4] == "info@xn--fsqu00a.xn--fiqs8s" for row in before.values())
    t0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
    with Store.open(s.db) as store:
        store.take_over(s.campaign_id, "t")
        jobs = store.claim(s.campaign_id, "t", 1000, t0)
    assert jobs is not None and len(jobs) == len(before)
    for job in jobs:
        _, rid, uid, email, email_ascii, name, slug = before[job.delivery_id][:7]
        assert (job.campaign_id, job.recipient_id, job.uid, job.email, job.email_ascii,
                job.name, job.list_slug) == (s.campaign_id, rid, uid, email, email_ascii,
                                             name, slug)
        assert (job.attempts, job.first_attempt_at) == (1, stamp(t0))
    # Never tried: left as they were, their attempt written with their reply.
    claimed = _stored(s.db, s.campaign_id)
    assert {r[7:10] for r in claimed.values()} == {("pending", 0, None)}

    # Each row its own result: replies with quotes, backslashes, CJK and U+2028.
    later = t0 + dt.timedelta(hours=1)
    results = []
    for i, job in enumerate(sorted(jobs, key=lambda j: j.delivery_id)):
        kind = (DeliveryStatus.SENT, DeliveryStatus.DEFERRED, DeliveryStatus.FAILED)[i % 3]
        results.append(DeliveryResult(
            job.delivery_id, kind, (250, 451, 550)[i % 3],
            f'reply {i}: "q" \\ 中文 \u2028 {job.email}', f"<c{s.campaign_id}.r{i}@example.org>",
            next_attempt_at=later if kind is DeliveryStatus.DEFERRED else None,
            attempts=job.attempts, first_attempt_at=job.first_attempt_at))
    with Store.open(s.db) as store:
        store.record_results(results)
        assert store.claim(s.campaign_id, "t", 1000, t0) == []  # deferred: not due yet
        again = store.claim(s.campaign_id, "t", 1000, later)
    after = _stored(s.db, s.campaign_id)
    for r in results:
        row = after[r.delivery_id]
        if r.status is DeliveryStatus.DEFERRED:  # claimed again at ``later``
            assert row[7:9] == ("sending", 2) and row[10] == stamp(later)
        else:
            assert row[7:9] == (r.status.value, 1) and row[10] is None
        assert row[9] == stamp(t0)  # the first attempt stays the first
        assert (row[11], row[12], row[13]) == (r.code, r.response, r.message_id)
        assert (row[14] is not None) == (r.status is DeliveryStatus.SENT)
    deferred = {r.delivery_id for r in results if r.status is DeliveryStatus.DEFERRED}
    assert again is not None and {j.delivery_id for j in again} == deferred
    assert {j.attempts for j in again} == {2}


def test_a_row_given_back_untried_is_as_it_was_before_the_claim(
        run: Run, initialised: Path, config_file: Path, env: None) -> None:
    """``unclaim``: a row claimed for the first time is pending again with no attempt;
    a retry claimed and given back untried is deferred again, its one attempt kept."""
    s = prepare(run, initialised, config_file)
    t0 = dt.datetime(2026, 12, 2, 9, tzinfo=dt.UTC)
    with Store.open(s.db) as store:
        store.take_over(s.campaign_id, "me")
        first, second = store.claim(s.campaign_id, "me", 2, t0) or []
        store.record_results([DeliveryResult(second.delivery_id, DeliveryStatus.DEFERRED, 451,
                                             "4.3.0 later", "<m@x>", next_attempt_at=t0,
                                             attempts=1, first_attempt_at=stamp(t0))])
        again = [j for j in store.claim(s.campaign_id, "me", 20, t0) or []
                 if j.delivery_id == second.delivery_id]
        assert [j.attempts for j in again] == [2]
        store.unclaim([first.delivery_id, second.delivery_id])
    rows = _stored(s.db, s.campaign_id)
    assert rows[first.delivery_id][7:9] == ("pending", 0)
    assert rows[second.delivery_id][7:9] == ("deferred", 1)
    assert rows[second.delivery_id][10] == stamp(t0)  # its retry time, kept


def test_a_crashed_senders_journal_is_recorded_before_anything_is_sent(
        run: Run, initialised: Path, config_file: Path, env: None) -> None:
    """The journal a killed sender leaves (``store.journal``): the next sender's
    take-over records every complete line of every segment, in order (a later reply for the same
    delivery wins), at the time each was journaled; skips a last line cut short
    (its append failed, so no message waited for it); then removes the file, and
    puts the rows still in flight back to pending."""
    s = prepare(run, initialised, config_file)
    t0 = dt.datetime(2026, 12, 2, 9, tzinfo=dt.UTC)
    with Store.open(s.db) as store:
        store.take_over(s.campaign_id, "first")
        a, b, c = store.claim(s.campaign_id, "first", 3, t0) or []
    path = journal_path(s.db, s.campaign_id)
    journal = Journal(path)
    journal.append(t0.timestamp(), [
        DeliveryResult(a.delivery_id, DeliveryStatus.DEFERRED, 451, "4.3.0 later", "<a@x>",
                       next_attempt_at=t0 + dt.timedelta(minutes=1), attempts=1,
                       first_attempt_at=stamp(t0)),
        DeliveryResult(b.delivery_id, DeliveryStatus.SENT, 250, "2.0.0 Ok: queued as 1",
                       "<b@x>")])
    later = t0 + dt.timedelta(seconds=70)
    journal.seal()  # the next line in the next segment
    journal.append(later.timestamp(), [
        DeliveryResult(a.delivery_id, DeliveryStatus.SENT, 250, "2.0.0 Ok: queued as 2",
                       "<a@x>")])
    journal.close(remove=False)
    assert journal_files(path) == [path, path.with_name(path.name + ".1")]
    with journal_files(path)[-1].open("ab") as f:  # the append a full disk cut short
        f.write(b'[1.0, [[%d, "sent", 250, "2.0.0 Ok"' % c.delivery_id)
    with Store.open(s.db) as store:
        store.take_over(s.campaign_id, "second")
    rows = _stored(s.db, s.campaign_id)
    assert rows[a.delivery_id][7] == "sent" and rows[a.delivery_id][12:15] == (
        "2.0.0 Ok: queued as 2", "<a@x>", stamp(later))
    assert rows[a.delivery_id][8:10] == (1, stamp(t0))  # its attempt, from the journal
    assert rows[b.delivery_id][7] == "sent" and rows[b.delivery_id][14] == stamp(t0)
    assert rows[c.delivery_id][7:9] == ("pending", 0)  # in flight at the crash: again
    assert journal_files(path) == []


def test_rows_in_hand_are_not_claimed_twice_and_a_rewind_claims_what_is_left(
        run: Run, initialised: Path, config_file: Path, env: None) -> None:
    """Never-tried rows stay pending while claimed (``Store.claim``'s cursor): the
    same store does not give them out again, a rewind (nothing in hand) starts
    from the first pending row, and a fresh store (a new sender) takes them all."""
    s = prepare(run, initialised, config_file)
    t0 = dt.datetime(2026, 12, 2, 9, tzinfo=dt.UTC)
    with Store.open(s.db) as store:
        store.take_over(s.campaign_id, "me")
        first = store.claim(s.campaign_id, "me", 3, t0) or []
        rest = store.claim(s.campaign_id, "me", 1000, t0) or []
        assert len(first) == 3 and rest
        ids = [j.delivery_id for j in first + rest]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)  # in order, each once
        assert store.claim(s.campaign_id, "me", 1000, t0) == []
        done = first[0]
        store.record_results([DeliveryResult(done.delivery_id, DeliveryStatus.SENT, 250,
                                             "2.0.0 Ok", "<m@x>", attempts=done.attempts,
                                             first_attempt_at=done.first_attempt_at)])
        store.rewind_claims(s.campaign_id)
        again = store.claim(s.campaign_id, "me", 1000, t0) or []
        assert [j.delivery_id for j in again] == ids[1:]
    with Store.open(s.db) as store:
        store.take_over(s.campaign_id, "next")
        assert [j.delivery_id for j in store.claim(s.campaign_id, "next", 1000, t0) or []
                ] == ids[1:]
    rows = _stored(s.db, s.campaign_id)
    assert rows[done.delivery_id][7:10] == ("sent", 1, stamp(t0))


def test_a_claim_reads_one_range_of_the_status_index_not_the_campaign(
        run: Run, initialised: Path, config_file: Path, env: None) -> None:
    """Each claim's queries seek the (campaign, status, next attempt) index: a claim
    that scanned the campaign's rows would make a run of a million quadratic."""
    from mailer.store.ledger import _CLAIM, _DUE, _FRESH

    s = prepare(run, initialised, config_file)
    conn = sqlite3.connect(s.db)
    try:
        for rows, params in ((_DUE, [s.campaign_id, "2026-12-02", 128]),
                             (_FRESH, [s.campaign_id, 0, 128])):
            plan = [r[3] for r in conn.execute(
                "EXPLAIN QUERY PLAN " + _CLAIM.format(rows=rows), params)]
            reads = [p for p in plan if p.startswith(("SEARCH d ", "SCAN d"))]
            assert reads and all(
                "idx_deliveries_campaign_id_status_next_attempt_at (campaign_id=? AND status=?"
                in p for p in reads), plan
    finally:
        conn.close()


def test_rows_are_encoded_as_the_standard_json_encoder_does() -> None:
    """``encode_rows`` keeps its C encoder from one call to the next: its output is
    byte for byte what ``json.dumps(..., ensure_ascii=False)`` writes, whatever the
    replies hold, and it reads back as the same rows."""
    import json

    from mailer.store.ledger import encode_rows

    later = dt.datetime(2026, 12, 2, 8, 30, 5, 123000, tzinfo=dt.UTC)
    results = [
        DeliveryResult(1, DeliveryStatus.SENT, 250, "2.0.0 Ok: queued as 3F1A2B", "<c1.r1.x@e.org>",
                       attempts=1, first_attempt_at="2026-12-02T08:30:00.000Z"),
        DeliveryResult(2, DeliveryStatus.DEFERRED, 451, 'try "later"\\ 王\u2028😀\x00\x1f',
                       '<c1.r2."q"\\@e.org>', later, False, 3, "2026-12-01T00:00:00.000Z"),
        DeliveryResult(3, DeliveryStatus.FAILED, 550, "x" * 600, "<c1.r3.y@e.org>", None, True),
    ]
    for batch in (results, results[1:2], []):
        got = encode_rows(batch)
        want = json.dumps([
            (r.delivery_id, r.status.value, r.code, r.response[:500], r.message_id,
             stamp(r.next_attempt_at) if r.next_attempt_at else None, r.bounce, r.attempts,
             r.first_attempt_at) for r in batch], ensure_ascii=False)
        assert got == want
        assert json.loads(got) == json.loads(want)
