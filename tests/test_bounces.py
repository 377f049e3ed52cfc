"""Bounces that come back later, read from a real Dovecot over IMAP.

A campaign is sent to a real aiosmtpd server; the envelope senders it received are
the VERP addresses the bounces are addressed to; the bounce texts (tests/
bounce_mail.py) are APPENDed to Dovecot and read by `mailer bounces fetch`, the
library pass, a process killed in the middle of a pass, and the daemon.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailer import config as config_mod
from mailer.bounces.classify import classify
from mailer.bounces.intake import ASIDE, PROCESSED, UNREADABLE, fetch_pass
from mailer.bounces.verp import VerpSigner
from mailer.schedule import Daemon

from . import bounce_mail as bm
from .conftest import CONFIG, Run
from .imap_server import Dovecot, dovecot  # noqa: F401 - the fixture
from .smtp_server import Behaviour, Server, smtp_server
from .test_send_cli import import_lists, issue_file, secret  # noqa: F401 - fixtures

BOUNCES = """
[bounces]
address = "bounces@example.org"
imap_host = "127.0.0.1"
imap_port = {port}
imap_tls = "none"
imap_user = "bounces"
processed_folder = "Processed"
aside_folder = "Aside"
soft_threshold = 2
poll_minutes = {poll}
"""


def write_config(config_file: Path, smtp_port: int, imap: Dovecot, *, poll: float = 0) -> None:
    text = CONFIG.replace("port = 2525", f"port = {smtp_port}")
    text += BOUNCES.format(port=imap.port, poll=poll)
    config_file.write_text(text, encoding="utf-8")
    config_file.chmod(0o600)


@pytest.fixture
def relay() -> Iterator[Server]:
    with smtp_server(Behaviour(pipelining=True)) as srv:
        yield srv


@pytest.fixture
def sent(run: Run, config_file: Path, initialised: Path, secret: None,  # noqa: F811
         relay: Server, dovecot: Dovecot, issue_file: Path,  # noqa: F811
         monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[str, str]]:
    """Campaign 1 sent to both sample lists; address -> (VERP envelope sender, the
    headers of the message as received)."""
    write_config(config_file, relay.port, dovecot)
    monkeypatch.setenv(config_mod.ENV_IMAP_PASSWORD, dovecot.password)
    import_lists(run)
    run("send", str(issue_file))
    out = {}
    for m in relay.messages:
        headers = m.data.split(b"\r\n\r\n", 1)[0].decode("utf-8").replace("\r\n", "\n")
        out[m.rcpt_tos[0]] = (m.mail_from, headers)
    assert len(out) == 21
    return out


def statuses(db: Path) -> dict[tuple[str, str], tuple[str, str]]:
    conn = sqlite3.connect(db)
    try:
        return {(r[0], r[1]): (r[2], r[3]) for r in conn.execute(
            "SELECT r.email, l.slug, s.status, s.source FROM subscriptions s "
            "JOIN recipients r ON r.id = s.recipient_id JOIN lists l ON l.id = s.list_id")}
    finally:
        conn.close()


def count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def bounce(sent: dict[str, tuple[str, str]], maker: Callable[[str, str, str], bytes],
           address: str) -> bytes:
    verp, headers = sent[address]
    return maker(verp, address, headers)


WANHUA = "dangban@wanhua.example.org"  # 万华集团, its only address
WAHAHA = ("dangwei@wahaha.example.org", "zuzhi@wahaha.example.org")  # 娃哈哈集团
REPORT_TO = "zzb@sheng.example.org"  # 省委组织部, a superior body


def test_every_envelope_sender_is_a_signed_verp_address_for_its_delivery(
        sent: dict[str, tuple[str, str]], config_file: Path, initialised: Path) -> None:
    config = config_mod.load(config_file)
    signer = VerpSigner("bounces@example.org", config.signing_keys())
    conn = sqlite3.connect(initialised)
    ids = dict(conn.execute("SELECT email, recipient_id FROM deliveries WHERE campaign_id = 1"))
    conn.close()
    senders = set()
    for address, (verp, headers) in sent.items():
        [(c, r, mac)] = signer.find(verp)
        assert signer.verify(c, r, mac, now=config_mod.dt.datetime.now(config_mod.dt.UTC))
        assert (int(c), int(r)) == (1, ids[address])
        assert "Return-Path" not in headers  # the relay adds it, not us
        # The Message-ID carries the same signature: the fallback when a relay
        # rewrites the envelope sender.
        assert f"Message-ID: <c1.r{r}.{mac}@" in headers, headers
        senders.add(verp)
    assert len(senders) == 21
    # A changed mac, recipient or key does not verify.
    verp = next(iter(senders))
    [(c, r, mac)] = signer.find(verp)
    now = config_mod.dt.datetime.now(config_mod.dt.UTC)
    assert signer.verify(c, str(int(r) + 1), mac, now=now) is None
    assert signer.verify(c, r, ("a" if mac[0] != "a" else "b") + mac[1:], now=now) is None
    other = VerpSigner("bounces@example.org",
                       [config_mod.SigningKey("k9", b"another-secret-0123456789")])
    assert other.verify(c, r, mac, now=now) is None


def test_a_mailbox_of_real_bounce_formats(
        run: Run, sent: dict[str, tuple[str, str]], dovecot: Dovecot,  # noqa: F811
        initialised: Path) -> None:
    addresses = sorted(a for a in sent if a not in (WANHUA, *WAHAHA, REPORT_TO)
                       and not a.endswith("sheng.example.org")
                       and not a.endswith("shi.example.org"))
    soft_a, soft_b, policy_a, policy_b, hard_x, delayed, auto, complained, msgid_only, \
        msgid_forged = addresses[:10]
    # The signed Message-ID of msgid_forged's delivery, its signature altered.
    forged_headers = re.sub(r"(Message-ID: <c\d+\.r\d+\.)([a-z2-7])",
                            lambda m: m.group(1) + ("a" if m.group(2) != "a" else "b"),
                            sent[msgid_forged][1], count=1)
    assert forged_headers != sent[msgid_forged][1]
    mails = {
        "postfix": bounce(sent, bm.postfix_user_unknown, WANHUA),
        "netease": bounce(sent, bm.netease_user_not_found, WAHAHA[0]),
        "alibaba": bounce(sent, bm.alibaba_mailbox_not_found, WAHAHA[1]),
        "exim": bounce(sent, bm.exim_mailbox_full, soft_a),
        "tencent": bounce(sent, bm.tencent_mailbox_full, soft_b),
        "qq": bounce(sent, bm.qq_content_denied, policy_a),
        "gmail": bounce(sent, bm.gmail_dmarc, policy_b),
        "exchange": bounce(sent, bm.exchange_not_found, hard_x),
        "report-to": bounce(sent, bm.postfix_user_unknown, REPORT_TO),
        "delayed": bounce(sent, bm.postfix_delayed, delayed),
        "auto": bounce(sent, bm.auto_reply, auto),
        "arf": bounce(sent, bm.arf_complaint, complained),
        # No VERP address anywhere (the relay rewrote the envelope sender): the signed
        # Message-ID of the returned headers names the delivery.
        "msgid": bm.postfix_user_unknown("bounces@example.org", msgid_only,
                                         sent[msgid_only][1]),
        "forged-msgid": bm.postfix_user_unknown("bounces@example.org", msgid_forged,
                                                forged_headers),
        "forged": bm.postfix_user_unknown(
            sent[hard_x][0].rsplit("-", 1)[0] + "-aaaaaaaaaaaaaaaa@example.org", hard_x,
            "Subject: x"),
        "foreign": bm.foreign_bounce("bounces@example.org"),
        "garbage": bm.GARBAGE,
    }
    for raw in mails.values():
        dovecot.append(raw)
    before = statuses(initialised)

    out = run("bounces", "fetch").stdout
    assert "read 17 message(s)" in out
    assert "8 applied" in out and "3 flagged" in out and "2 ignored" in out
    assert "3 aside" in out and "1 unreadable" in out
    assert "1 message(s) not understood wait in the mailbox" in out

    after = statuses(initialised)
    changed = {k: v for k, v in after.items() if before[k] != v}
    assert changed == {
        (WANHUA, "send-to"): ("bounced", "bounce"),
        (WAHAHA[0], "send-to"): ("bounced", "bounce"),
        (WAHAHA[1], "send-to"): ("bounced", "bounce"),
        (hard_x, "send-to"): ("bounced", "bounce"),
        (msgid_only, "send-to"): ("bounced", "bounce"),
        (complained, "send-to"): ("unsubscribed", "complaint"),
    }  # soft (score 1 of 2), policy, report-to, delays, auto-replies, forgeries: unchanged

    # The mailbox: the garbage stays, flagged; the rest moved, none deleted.
    inbox = dovecot.messages()
    assert [(raw, UNREADABLE in flags) for raw, flags in inbox.values()] == [
        (bm.GARBAGE, True)]
    processed = dovecot.messages("Processed")
    aside = dovecot.messages("Aside")
    assert len(processed) == 13 and len(aside) == 3
    assert all(PROCESSED in f for _, f in processed.values())
    assert all(ASIDE in f for _, f in aside.values())
    assert {raw for raw, _ in aside.values()} == {mails["forged-msgid"], mails["forged"],
                                                  mails["foreign"]}

    # The ledger tells the truth.
    log = json.loads(run("log", "1", "--unit", "万华集团", "--json").stdout)
    [d] = log
    assert d["status"] == "sent"
    assert d["reply"].startswith("accepted ") and ", bounced " in d["reply"]
    assert d["reply"].endswith("550 5.1.1 <dangban@wanhua.example.org>: Recipient address "
                               "rejected: User unknown")
    answer = run("log", "--issue", "9", "--unit", "万华集团").stdout.splitlines()[0]
    assert ": no: 1 of 1 address accepted on " in answer, answer
    assert answer.endswith(", 1 bounced later, 0 refused"), answer
    table = run("log", "1").stdout
    assert "21 deliveries, 21 accepted by the relay, 10 bounced later" in table
    history = json.loads(run("history", WANHUA, "--json").stdout)
    assert any(e["actor"] == "bounce" and e["detail"]["after"] == {"status": "bounced"}
               for e in history)

    report = run("bounces").stdout
    assert "娃哈哈集团: no longer receives the bulletin (both addresses stopped" in report
    assert "万华集团: no longer receives the bulletin (its address stopped" in report
    assert "scoring" in report and "score 1" in report
    assert "report-to body: check and fix the address by hand" in report
    assert "sending problem" not in report or "policy" in report
    rows = json.loads(run("bounces", "--json").stdout)
    states = {(r["email"], r["state"]) for r in rows["addresses"]}
    assert {(soft_a, "scoring"), (soft_b, "scoring"), (policy_a, "policy"),
            (policy_b, "policy"), (REPORT_TO, "flagged"), (complained, "complaint"),
            (WANHUA, "bounced")} <= states
    assert {k["outcome"] for k in rows["kept"]} == {"aside", "unreadable"}
    assert any("forged or altered Message-ID" in k["reason"] for k in rows["kept"])
    assert any("forged or altered VERP" in k["reason"] for k in rows["kept"])
    one_unit = json.loads(run("bounces", "--unit", "娃哈哈集团", "--json").stdout)
    assert {r["email"] for r in one_unit["addresses"]} == set(WAHAHA)

    # Fetched again: nothing new. The same bounce delivered twice counts once.
    assert "nothing new" in run("bounces", "fetch").stdout
    events = count(initialised, "SELECT COUNT(*) FROM events")
    dovecot.append(mails["postfix"])
    dovecot.append(mails["exim"])
    out = run("bounces", "fetch").stdout
    assert "2 duplicate" in out
    assert count(initialised, "SELECT COUNT(*) FROM events") == events
    assert len(dovecot.messages("Processed")) == 15

    # Staff undo a bounce stop.
    run("recipients", "resubscribe", WANHUA, "--list", "send-to", "--reason", "单位来函更正")
    assert statuses(initialised)[(WANHUA, "send-to")] == ("active", "staff")


def _config(config_file: Path) -> config_mod.Config:
    return config_mod.load(config_file)


def test_soft_bounces_score_once_a_day_stop_at_the_threshold_and_go_stale(
        run: Run, sent: dict[str, tuple[str, str]], dovecot: Dovecot,  # noqa: F811
        config_file: Path, initialised: Path, issue_file: Path) -> None:  # noqa: F811
    config = _config(config_file)
    for _ in range(3):  # campaigns 2, 3 and 4: one delivery each to the same address
        run("send", str(issue_file), "--again")
    who = WANHUA
    conn = sqlite3.connect(initialised)
    [rid] = {r for (r,) in conn.execute("SELECT recipient_id FROM deliveries WHERE email = ?",
                                        [who])}
    conn.close()
    signer = VerpSigner("bounces@example.org", config.signing_keys())
    headers = sent[who][1]
    day = config_mod.dt.datetime(2030, 1, 1, 2, tzinfo=config_mod.dt.UTC)

    def soft(campaign: int) -> bytes:
        return bm.exim_mailbox_full(signer.address(campaign, rid), who, headers)

    def fetch_at(t: config_mod.dt.datetime) -> dict[str, int]:
        return fetch_pass(config, clock=lambda: t).counts

    def score() -> int:
        return count(initialised, "SELECT score FROM bounce_scores")

    dovecot.append(soft(1))
    dovecot.append(soft(2))
    assert fetch_at(day) == {"applied": 2}
    assert score() == 1  # counted once that day
    assert statuses(initialised)[(who, "send-to")][0] == "active"
    # Eight days later the old score is stale (score_stale_days = 7): it starts again.
    dovecot.append(soft(3))
    fetch_at(day + config_mod.dt.timedelta(days=8))
    assert score() == 1
    assert statuses(initialised)[(who, "send-to")][0] == "active"
    # The next day it reaches 2, the threshold: stopped, with the reason kept.
    dovecot.append(soft(4))
    fetch_at(day + config_mod.dt.timedelta(days=9))
    assert score() == 2
    assert statuses(initialised)[(who, "send-to")] == ("bounced", "bounce")
    history = json.loads(run("history", who, "--json").stdout)
    assert "soft bounces: score 2 reached 2" in history[-1]["detail"]["reason"]


CRASH = """
import os, sys
from mailer import config
from mailer.bounces.intake import fetch_pass
seen = []
def after(uid, outcome):
    seen.append(uid)
    if len(seen) == 2:
        os._exit(9)  # dies between the commit and the mailbox step: no clean-up at all
fetch_pass(config.load(sys.argv[1]), after_record=after)
"""


def test_a_pass_killed_midway_loses_nothing_and_counts_nothing_twice(
        sent: dict[str, tuple[str, str]], dovecot: Dovecot, config_file: Path,  # noqa: F811
        initialised: Path, tmp_path: Path) -> None:
    targets = [WANHUA, *WAHAHA]
    for a in targets:
        dovecot.append(bounce(sent, bm.postfix_user_unknown, a))
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    proc = subprocess.run([sys.executable, str(script), str(config_file)], timeout=60,
                          capture_output=True)
    assert proc.returncode == 9, proc.stderr
    assert count(initialised, "SELECT COUNT(*) FROM bounce_messages") == 2
    # The second was recorded but not moved: still in the inbox with the third.
    assert len(dovecot.messages()) == 2
    report = fetch_pass(_config(config_file))
    assert report.counts == {"duplicate": 1, "applied": 1}
    assert len(dovecot.messages()) == 0
    assert len(dovecot.messages("Processed")) == 3
    st = statuses(initialised)
    assert all(st[(a, "send-to")] == ("bounced", "bounce") for a in targets)
    stops = count(initialised, "SELECT COUNT(*) FROM events WHERE actor = 'bounce' AND "
                               "kind = 'subscription.status'")
    assert stops == 3


def test_the_daemon_polls_the_mailbox(
        sent: dict[str, tuple[str, str]], dovecot: Dovecot, config_file: Path,  # noqa: F811
        initialised: Path, relay: Server) -> None:
    write_config(config_file, relay.port, dovecot, poll=0.01)  # every 0.6 s
    config = _config(config_file)
    dovecot.append(bounce(sent, bm.postfix_user_unknown, WANHUA))

    async def main() -> None:
        daemon = Daemon(config, web=False)
        task = asyncio.create_task(daemon.run())
        deadline = time.monotonic() + 30
        try:
            for _ in range(600):  # bounded in count and time
                if statuses(initialised)[(WANHUA, "send-to")][0] == "bounced" or \
                        time.monotonic() > deadline or task.done():
                    break
                await asyncio.sleep(0.05)
            assert statuses(initialised)[(WANHUA, "send-to")][0] == "bounced"
            # Polled again: a second bounce that arrives later is read too.
            dovecot.append(bounce(sent, bm.postfix_user_unknown, WAHAHA[0]))
            for _ in range(600):
                if statuses(initialised)[(WAHAHA[0], "send-to")][0] == "bounced" or \
                        time.monotonic() > deadline or task.done():
                    break
                await asyncio.sleep(0.05)
            assert statuses(initialised)[(WAHAHA[0], "send-to")][0] == "bounced"
        finally:
            daemon.stopping.set()
            await asyncio.wait_for(task, 30)

    asyncio.run(main())


def test_an_unreachable_mailbox_is_one_line(run: Run, sent: dict[str, tuple[str, str]],
                                            config_file: Path, relay: Server) -> None:
    closed = Dovecot("127.0.0.1", 1, "x", "y", Path("/"))
    write_config(config_file, relay.port, closed)
    result = run("bounces", "fetch", ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: bounce mailbox 127.0.0.1:1:")
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("maker", "kind", "status"), [
    (bm.postfix_user_unknown, "hard", "5.1.1"),
    (bm.exchange_not_found, "hard", "5.1.10"),
    (bm.gmail_dmarc, "policy", "5.7.26"),
    (bm.exim_mailbox_full, "soft", "5.2.2"),
    (bm.qq_content_denied, "policy", None),
    (bm.netease_user_not_found, "hard", None),
    (bm.tencent_mailbox_full, "soft", None),
    (bm.alibaba_mailbox_not_found, "hard", None),
    (bm.postfix_delayed, "delayed", None),
    (bm.auto_reply, "autoreply", None),
    (bm.arf_complaint, "complaint", None),
])
def test_each_format_is_read_as_what_it_is(maker: Callable[[str, str, str], bytes],
                                           kind: str, status: str | None) -> None:
    # The returned copy says "spam" and "user unknown": only the explanation counts.
    original = "From: bulletin@example.org\nSubject: spam user unknown 垃圾邮件"
    raw = maker("bounces+c1-r1-aaaaaaaaaaaaaaaa@example.org", "u@member.example.com",
                original)
    reading = classify(email.message_from_bytes(raw, policy=email.policy.default))
    assert (reading.kind.value, reading.status) == (kind, status)
    assert reading.text


def test_garbage_and_plain_mail_are_not_understood() -> None:
    for raw in (bm.GARBAGE, b"From: a@b.example\r\nSubject: hello\r\n\r\nlunch?\r\n"):
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert classify(msg).kind.value == "unreadable"
