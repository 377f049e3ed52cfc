"""`mailer send`, `send --resume`, `test-send` and `log` through the CLI, against a real
aiosmtpd server on 127.0.0.1 (tests/smtp_server.py)."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import json
import re
import shutil
import socket
from collections import Counter
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailer import config as config_mod

from .conftest import CONFIG, REPO, Run, assert_one_line_error, ledger, snapshot
from .smtp_server import Behaviour, Received, Server, smtp_server

SECRET = "test-secret-0123456789abcdef"
ISSUE = REPO / "tests" / "data" / "bulletin-2015-09.txt"
REPORT_TO = 7
SEND_TO = 14
SUBJECT = "简报 2015年第9期（总第33期）"


def write_config(config_file: Path, port: int, *, smtp_extra: str = "") -> None:
    """conftest's CONFIG with [smtp] pointing at ``port`` (tls stays "none")."""
    text = CONFIG.replace("port = 2525", f"port = {port}")
    assert text != CONFIG
    if smtp_extra:
        text = text.replace('tls = "none"\n', f'tls = "none"\n{smtp_extra}\n')
    config_file.write_text(text, encoding="utf-8")
    config_file.chmod(0o600)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def import_lists(run: Run) -> None:
    for slug in ("report-to", "send-to"):
        run("recipients", "import", str(REPO / "recipients" / f"{slug}.csv"), "--list", slug)


def parse(m: Received) -> EmailMessage:
    msg = email.message_from_bytes(m.data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def rcpt_counts(srv: Server) -> Counter[str]:
    return Counter(to for m in srv.messages for to in m.rcpt_tos)


def assert_tempfail(result: Any, *fragments: str) -> None:
    """A campaign stopped with deliveries due: exit 75, its last stderr line says how
    many, why and what continues it; no traceback."""
    assert result.exit_code == 75, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, last


def log_json(run: Run, *args: str) -> Any:
    return json.loads(run("log", *args, "--json").stdout)




@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config_mod.ENV_SECRET, SECRET)


@pytest.fixture
def issue_file(tmp_path: Path) -> Path:
    """A copy of the sample: campaigns remember the file and refuse it changed."""
    path = tmp_path / "issues" / "bulletin-2015-09.txt"
    path.parent.mkdir()
    shutil.copyfile(ISSUE, path)
    return path


@pytest.fixture
def relay(config_file: Path) -> Iterator[Server]:
    """A pipelining aiosmtpd server, and the config pointing at it."""
    with smtp_server(Behaviour(pipelining=True)) as srv:
        write_config(config_file, srv.port)
        yield srv


@pytest.fixture
def ready(run: Run, initialised: Path, secret: None) -> Path:
    """Initialised, both sample lists imported, a signing secret set."""
    import_lists(run)
    return initialised


# --- the normal path --------------------------------------------------------------


def test_send_to_both_lists_then_log(
    run: Run, ready: Path, relay: Server, issue_file: Path
) -> None:
    result = run("send", str(issue_file))
    assert "warning" not in result.stderr  # the 报 line matches the report-to list
    assert "campaign 1" in result.stdout and "report-to 7" in result.stdout
    assert len(relay.messages) == REPORT_TO + SEND_TO
    counts = rcpt_counts(relay)
    assert len(counts) == 21 and set(counts.values()) == {1}

    [c] = log_json(run)
    assert c["campaign"] == 1 and c["status"] == "sent" and c["issue"] == SUBJECT
    assert c["lists"] == "report-to,send-to"
    assert (c["sent"], c["deferred"], c["failed"], c["pending"]) == (21, 0, 0, 0)

    [d] = log_json(run, "1", "--unit", "万向集团")
    assert d["email"] == "dangban@wanxiang.example.org" and d["unit"] == "万向集团"
    assert d["status"] == "sent" and d["list"] == "send-to" and d["attempts"] == 1
    assert d["reply"].startswith("250 ")
    table = run("log", "1", "--unit", "万向集团").stdout
    answer, title = table.splitlines()[:2]
    assert answer.startswith(f"campaign 1 ({SUBJECT}): yes: 1 of 1 address accepted on 20")
    assert answer.endswith(", 0 refused")
    assert title.rstrip() == "1 delivery, 1 accepted by the relay"
    assert "万向集团" in table and " sent " in table

    rows = list(csv.reader(io.StringIO(run("log", "1", "--csv").stdout)))
    assert rows[0][:6] == ["campaign", "issue", "unit", "email", "list", "status"]
    assert len(rows) == 1 + 21
    assert {r[5] for r in rows[1:]} == {"sent"}
    assert sorted(r[3] for r in rows[1:]) == sorted(counts)
    campaigns = list(csv.DictReader(io.StringIO(run("log", "--csv").stdout)))
    assert [(r["campaign"], r["status"], r["sent"]) for r in campaigns] == [("1", "sent", "21")]


def test_repeat_is_refused_unless_again(
    run: Run, ready: Path, relay: Server, issue_file: Path
) -> None:
    run("send", str(issue_file))
    before = snapshot(ready)
    refused = run("send", str(issue_file), ok=False)
    assert_one_line_error(refused, "already has campaign 1", "--again")
    assert snapshot(ready) == before
    assert len(relay.messages) == 21

    refused = run("send", str(issue_file), "--list", "send-to", ok=False)
    assert_one_line_error(refused, "already has campaign 1", "send-to")
    assert snapshot(ready) == before

    run("send", str(issue_file), "--again")
    assert len(relay.messages) == 42
    assert set(rcpt_counts(relay).values()) == {2}
    log = log_json(run)
    assert [(c["campaign"], c["status"], c["sent"]) for c in log] == [(1, "sent", 21),
                                                                      (2, "sent", 21)]
    # A second campaign: new Message-IDs (they depend on campaign and recipient).
    ids = [parse(m)["Message-ID"] for m in relay.messages]
    assert len(set(ids)) == 42


def test_dry_run_sends_and_writes_nothing(
    run: Run, ready: Path, relay: Server, issue_file: Path
) -> None:
    before = snapshot(ready)
    result = run("send", str(issue_file), "--dry-run")
    assert f"subject: {SUBJECT}" in result.stdout
    assert "report-to (报): 7 recipients" in result.stdout
    assert "send-to (发): 14 recipients" in result.stdout
    assert "发：协会会员" in result.stdout
    assert "nothing was sent or saved" in result.stdout
    assert snapshot(ready) == before
    assert relay.messages == []
    assert relay.sessions == []  # not even a connection

    # After a real send, a dry run says the repeat would be refused; still writes nothing.
    run("send", str(issue_file))
    before = snapshot(ready)
    result = run("send", str(issue_file), "--dry-run")
    assert "would be refused" in result.stderr
    assert snapshot(ready) == before
    assert len(relay.messages) == 21


def test_limit_then_resume_sends_each_once(
    run: Run, ready: Path, relay: Server, issue_file: Path
) -> None:
    first = run("send", str(issue_file), "--limit", "5")
    assert "--resume 1" in first.stdout
    assert len(relay.messages) == 5
    [c] = log_json(run)
    assert c["status"] == "sending" and c["sent"] == 5 and c["pending"] == 16
    run("send", "--resume", "1", "--limit", "3")
    assert len(relay.messages) == 8
    run("send", "--resume")  # the newest sending campaign
    counts = rcpt_counts(relay)
    assert len(relay.messages) == 21 and len(counts) == 21 and set(counts.values()) == {1}
    [c] = log_json(run)
    assert c["status"] == "sent" and c["sent"] == 21
    done = run("send", "--resume", "1")  # asked for what is so: said plainly, exit 0
    assert done.stdout.startswith("campaign 1 is already sent; nothing is left to resume")
    refused = run("send", "--resume", ok=False)
    assert_one_line_error(refused, "no campaign is waiting")


def test_end_block_warning_names_the_body_missing_from_the_list(
    run: Run, ready: Path, relay: Server, issue_file: Path
) -> None:
    run("recipients", "remove", "zhangzhongcan@example.org", "--list", "report-to")
    result = run("send", str(issue_file))
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert warnings == ["warning: 张仲灿: no address on report-to; they will not receive it"]
    assert len(relay.messages) == 20
    assert "zhangzhongcan@example.org" not in rcpt_counts(relay)
    # The lists decide who receives, not what the bulletin says: the 版记 of every
    # copy is the issue's own, 张仲灿 and the 、/， as written.
    report_line = ("省委组织部、省委“两新”工委，市委组织部、市委“两新”工委，"
                   "各区、县（市）委组织部、各区、县（市）委“两新”工委、张仲灿")
    for rcpt in ("zzb@sheng.example.org", "dangban@wanhua.example.org"):
        msg = next(parse(m) for m in relay.messages if m.rcpt_tos == [rcpt])
        text, html = msg.get_body(("plain",)), msg.get_body(("html",))
        assert text is not None and html is not None
        end = text.get_content().split("=" * 72)[-2]  # between the two rules of the 版记
        lines = [ln.strip() for ln in end.strip().splitlines()]
        assert "".join(lines[:-1]) == "报：" + report_line
        assert lines[-1] == "发：协会会员"
        assert re.search(r">报：</td><td[^>]*>" + re.escape(report_line) + "</td>",
                         html.get_content())
        assert re.search(r">发：</td><td[^>]*>协会会员</td>", html.get_content())


def test_schedule_and_render_report_coverage_in_staff_words(
    run: Run, ready: Path, relay: Server, issue_file: Path, tmp_path: Path
) -> None:
    run("recipients", "add", "office@shengzf.example.org", "--list", "report-to",
        "--unit", "省政府办公厅", "--create-unit")
    expected = ["warning: report-to: the 报： line does not name 1 unit on the list "
                "(省政府办公厅); they receive it all the same"]
    result = run("schedule", str(issue_file), "--at", "2099-01-01 09:00")
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")] == expected
    result = run("render", str(issue_file), "--out", str(tmp_path / "d"))
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")] == expected
    assert relay.messages == []


def test_resume_refused_when_the_issue_file_changed(
    run: Run, ready: Path, relay: Server, issue_file: Path
) -> None:
    run("send", str(issue_file), "--limit", "5")
    text = issue_file.read_text(encoding="utf-8")
    edited = text.replace("106 家单位", "107 家单位", 1)  # a body edit: still parses
    assert edited != text
    issue_file.write_text(edited, encoding="utf-8")
    before = snapshot(ready)
    refused = run("send", "--resume", "1", ok=False)
    assert_one_line_error(refused, "campaign 1", issue_file.name, "changed")
    assert snapshot(ready) == before
    assert len(relay.messages) == 5

    issue_file.unlink()
    refused = run("send", "--resume", "1", ok=False)
    assert_one_line_error(refused, "campaign 1", "gone")
    assert len(relay.messages) == 5


def test_unreachable_relay_then_resume(
    run: Run, ready: Path, config_file: Path, issue_file: Path
) -> None:
    write_config(config_file, closed_port())
    refused = run("send", str(issue_file), ok=False)
    assert_tempfail(refused, "21 deliveries still due", "cannot be reached", "--resume 1")
    [c] = log_json(run)
    assert c["status"] == "sending" and c["pending"] == 21 and c["sent"] == 0
    assert {d["status"] for d in log_json(run, "1")} == {"pending"}
    assert {r["attempts"] for r in ledger(ready).values()} == {0}

    refused = run("send", "--resume", "1", ok=False)  # still down
    assert_tempfail(refused, "cannot be reached")

    with smtp_server() as srv:  # the plain (non-pipelining) path
        write_config(config_file, srv.port)
        run("send", "--resume", "1")
    counts = rcpt_counts(srv)
    assert len(srv.messages) == 21 and set(counts.values()) == {1}
    [c] = log_json(run)
    assert c["status"] == "sent" and c["sent"] == 21


def test_no_secret_is_one_line_before_anything_is_written(
    run: Run, ready: Path, relay: Server, issue_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(config_mod.ENV_SECRET)
    monkeypatch.delenv(config_mod.ENV_PREVIOUS_SECRET, raising=False)
    before = snapshot(ready)
    refused = run("send", str(issue_file), ok=False)
    assert_one_line_error(refused, "no signing secret", config_mod.ENV_SECRET)
    assert snapshot(ready) == before
    assert relay.messages == []


def test_test_send_is_logged_apart_from_campaigns(
    run: Run, ready: Path, relay: Server, issue_file: Path
) -> None:
    result = run("test-send", str(issue_file), "--to", "Secretariat@Example.org")
    assert "sent to secretariat@example.org" in result.stdout
    [m] = relay.messages
    assert m.rcpt_tos == ["secretariat@example.org"]
    msg = parse(m)
    assert str(msg["Subject"]) == f"【测试】{SUBJECT}"
    [t] = log_json(run, "--tests")
    assert t["email"] == "secretariat@example.org" and t["list"] == "send-to"
    assert t["code"] == 250 and t["message_id"] == msg["Message-ID"]
    assert log_json(run) == []  # no campaign

    run("test-send", str(issue_file), "--to", "zzb@sheng.example.org", "--list", "report-to")
    assert len(log_json(run, "--tests")) == 2
    msg = parse(relay.messages[-1])
    assert str(msg["Subject"]).startswith("【测试】") and msg["List-Unsubscribe"] is None
    # A test copy does not count as having sent the issue.
    run("send", str(issue_file))
    [c] = log_json(run)
    assert c["sent"] == 21 and len(relay.messages) == 23


def test_received_messages_are_well_formed(
    run: Run, ready: Path, relay: Server, issue_file: Path
) -> None:
    run("send", str(issue_file))
    by_email = {d["email"]: d for d in log_json(run, "1")}
    assert len(by_email) == 21
    urls = set()
    for m in relay.messages:
        [to] = m.rcpt_tos
        msg = parse(m)
        assert str(msg["Subject"]) == SUBJECT
        assert msg.get_content_type() == "multipart/alternative"
        parts = list(msg.iter_parts())
        assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
        assert msg["Message-ID"] == by_email[to]["message_id"]
        assert to in str(msg["To"])
        text, html = (p.get_content() for p in parts)
        if by_email[to]["list"] == "send-to":
            assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            header = str(msg["List-Unsubscribe"])
            url = header.split(">")[0].lstrip("<")
            assert url.startswith("https://bulletin.example.org/u/v1.")
            assert url in text and url in html
            urls.add(url)
        else:
            assert msg["List-Unsubscribe-Post"] is None
            assert msg["List-Unsubscribe"] is None
            assert "/u/v1." not in text and "/u/v1." not in html
    assert len(urls) == SEND_TO  # personal


def test_permanent_refusal_is_logged_and_bounces_the_address(
    run: Run, ready: Path, config_file: Path, issue_file: Path
) -> None:
    bad = "dangban@wanxiang.example.org"
    with smtp_server(Behaviour(pipelining=True, refuse={bad: 550})) as srv:
        write_config(config_file, srv.port)
        result = run("send", str(issue_file))
    assert "20 sent" in result.stdout and "1 failed" in result.stdout
    assert len(srv.messages) == 20 and bad not in rcpt_counts(srv)
    [c] = log_json(run)
    assert c["status"] == "sent" and c["sent"] == 20 and c["failed"] == 1
    [d] = log_json(run, "1", "--unit", "万向集团")
    assert d["status"] == "failed" and d["reply"].startswith("550 ") and bad in d["reply"]
    members = json.loads(run("recipients", "list", "--json").stdout)
    status = {(m["email"], m["list_slug"]): m["status"] for m in members}
    assert status[(bad, "send-to")] == "bounced"
    assert Counter(status.values()) == {"active": 20, "bounced": 1}


def test_resume_without_secret_is_one_line_and_stays_resumable(
    run: Run, ready: Path, relay: Server, issue_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("send", str(issue_file), "--list", "send-to", "--limit", "3")
    monkeypatch.delenv(config_mod.ENV_SECRET)
    refused = run("send", "--resume", "1", ok=False)
    assert_one_line_error(refused, "no signing secret")
    assert len(relay.messages) == 3
    [c] = log_json(run)
    assert c["status"] == "sending" and c["sent"] == 3 and c["pending"] == 11
    assert {r["attempts"] for r in ledger(ready).values() if r["status"] == "pending"} == {0}
    monkeypatch.setenv(config_mod.ENV_SECRET, SECRET)
    run("send", "--resume", "1")
    assert len(relay.messages) == 14 and set(rcpt_counts(relay).values()) == {1}


def test_resume_refuses_options_that_only_apply_to_a_new_campaign(
    run: Run, ready: Path, relay: Server, issue_file: Path
) -> None:
    run("send", str(issue_file), "--limit", "2")
    before = snapshot(ready)
    for extra in (["--dry-run"], ["--again"], ["--list", "send-to"]):
        refused = run("send", "--resume", "1", *extra, ok=False)
        assert refused.exit_code == 1, (extra, refused.output)  # as the README says
        assert extra[0] in refused.stderr and "--resume" in refused.stderr
        assert snapshot(ready) == before
    assert len(relay.messages) == 2  # --dry-run did not send


def test_a_list_named_twice_counts_once(
    run: Run, ready: Path, relay: Server, issue_file: Path
) -> None:
    dry = run("send", str(issue_file), "--list", "send-to", "--list", "send-to", "--dry-run")
    assert dry.stdout.count("send-to (发): 14 recipients") == 1, dry.stdout
    result = run("send", str(issue_file), "--list", "send-to", "--list", "send-to")
    assert "→ send-to 14\n" in result.stdout
    [c] = log_json(run)
    assert c["lists"] == "send-to" and c["sent"] == 14
