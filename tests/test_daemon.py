"""The daemon as staff run it: real `mailer run` processes, a real SMTP server, real HTTP."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import Result

from .conftest import CONFIG, REPO, SAMPLE_ISSUE, Run
from .processes import Command, start_mailer
from .smtp_server import Behaviour, Server, smtp_server

SECRET = "daemon-secret-0123456789abcdef"
ZONE = dt.timezone(dt.timedelta(hours=8))  # Asia/Shanghai, the config's default
POLL = 0.2  # [schedule] poll_seconds of the daemons here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    """Poll until check() is truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def at(seconds: float) -> tuple[str, dt.datetime]:
    """A local time string at least `seconds` from now, rounded up to a whole second (the
    CLI's resolution), and the instant it means."""
    exact = dt.datetime.now(ZONE) + dt.timedelta(seconds=seconds)
    when = exact.replace(microsecond=0) + dt.timedelta(seconds=1 if exact.microsecond else 0)
    return when.strftime("%Y-%m-%d %H:%M:%S"), when


def schedule_soon(run: Run, issue: Path, lead: float = 1.0) -> tuple[Result, dt.datetime]:
    """`mailer schedule ISSUE --at <lead s from now> --list send-to`. On a loaded
    machine the command itself can take longer than the lead and then rightly refuses
    the time as past: it is asked again with more lead (bounded), and the time it
    took is returned."""
    for extra in (0.0, 2.0, 5.0):
        text, when = at(lead + extra)
        result = run("schedule", str(issue), "--at", text, "--list", "send-to", ok=False)
        if result.exit_code == 0:
            return result, when
        assert "is in the past" in result.output, result.output
    raise AssertionError(f"every time was past by the time it was checked: {result.output}")


def reschedule_soon(d: Daemon, save: Callable[[dt.datetime], None],
                    lead: float = 2.0) -> dt.datetime:
    """Save the watched file with a send_at ``lead`` s from now and wait for the
    daemon to reschedule it. On a loaded machine the daemon can read the file only
    after that time and then rightly refuses it as past: it is saved again with more
    lead (bounded). Returns the time it took."""
    for extra in (0.0, 3.0, 8.0):
        text = d.text()
        done, past = text.count("event=issue.rescheduled"), text.count("is in the past")
        _, soon = at(lead + extra)
        save(soon)
        wait_for(lambda done=done, past=past: d.text().count("event=issue.rescheduled") > done
                 or d.text().count("is in the past") > past, 15, "the reschedule")
        if d.text().count("event=issue.rescheduled") > done:
            return soon
    raise AssertionError("every send_at was past by the time the daemon read it")


class Daemon:
    """`mailer run` in a process of its own, its log in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: Command | None = None

    def start(self) -> Daemon:
        env = {**os.environ, "MAILER_SECRET": SECRET, "PYTHONPATH": str(REPO)}
        before = self.text().count("event=synced")
        self.proc = start_mailer("--config", str(self.config), "run", env=env, log=self.log)
        wait_for(lambda: self.text().count("event=synced") > before, 20, "the daemon to start")
        return self

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8") if self.log.exists() else ""

    def last_synced(self) -> str:
        """The line on which the last start's first pass over the table ended."""
        return [ln for ln in self.text().splitlines() if "event=synced" in ln][-1]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def daemon_env(tmp_path: Path, run: Run, config_file: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[Daemon, Path]]]:
    """A config whose relay is a test server; yields a factory for daemons."""
    monkeypatch.setenv("MAILER_SECRET", SECRET)
    started: list[Daemon] = []
    web_port = free_port()

    def make(server: Server, *, extra: str = "", rate: float = 0,
             recipients: int = 0) -> tuple[Daemon, Path]:
        text = CONFIG.replace("port = 2525", f"port = {server.port}\nconcurrency = 4\n"
                              f"rate_limit = {rate}\ntimeout = 5")
        text = text.replace('[web]\n', f'[web]\nport = {web_port}\n')
        # The daemon looks at the table 5 times a second here, not once: what the
        # tests wait for (a pause, a cancel, a schedule seen) comes sooner, and the
        # same way.
        if "[schedule]\n" not in extra:
            extra += "\n[schedule]\n"
        extra = extra.replace("[schedule]\n", f"[schedule]\npoll_seconds = {POLL}\n", 1)
        config_file.write_text(text + extra, encoding="utf-8")
        run("init")
        run("recipients", "import", str(REPO / "recipients" / "send-to.csv"), "--list", "send-to")
        if recipients:
            bulk = tmp_path / "bulk.csv"
            bulk.write_text("email,name,unit,group\n" + "".join(
                f"m{i:04d}@bulk.example.org,联系人{i},批量单位{i % 10},\n"
                for i in range(recipients)), encoding="utf-8")
            run("recipients", "import", str(bulk), "--list", "send-to")
        issue = tmp_path / "bulletin.txt"
        if not issue.exists():
            issue.write_bytes(SAMPLE_ISSUE.read_bytes())
        d = Daemon(config_file, tmp_path / f"daemon{len(started)}.log")
        started.append(d)
        return d, issue

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.stop(signal.SIGKILL)


def campaigns(run: Run) -> list[dict[str, object]]:
    data: list[dict[str, object]] = json.loads(run("schedule", "list", "--json").stdout)
    return data


def by_recipient(server: Server) -> Counter[str]:
    return Counter(m.rcpt_tos[0] for m in server.messages)


# --- timing -----------------------------------------------------------------------


def test_scheduled_two_seconds_ahead_arrives_on_time(daemon_env: Callable[..., tuple[Daemon, Path]],
                                                      run: Run) -> None:
    with smtp_server(Behaviour(pipelining=True)) as srv:
        d, issue = daemon_env(srv)
        d.start()
        _, when = schedule_soon(run, issue, 2)
        wait_for(lambda: srv.messages, 15, "the first message")
        first = dt.datetime.now(ZONE)
        wait_for(lambda: len(srv.messages) == 14, 15, "all 14 messages")
        assert d.stop() == 0
    # Never early. How late depends on the machine's load as much as on the daemon,
    # so lateness is judged by order rather than by a tight window: the timer was
    # armed before it fired, and the run it started was its first (no retry, no
    # missed). The bound only catches a daemon that waits for something else.
    lag = (first - when).total_seconds()
    assert lag >= -0.5, f"first message {-lag:.2f} s before its time"
    assert lag <= 10, f"first message {lag:.2f} s after its time"
    text = d.text()
    assert text.index("event=scheduled") < text.index("event=started")
    assert "event=missed" not in text and "event=busy" not in text
    assert "event=started" in text and "event=finished" in text
    assert campaigns(run)[0]["status"] == "sent"


def test_down_across_the_send_time_then_restarted_within_the_late_limit(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run) -> None:
    with smtp_server() as srv:
        d, issue = daemon_env(srv)
        _, when = schedule_soon(run, issue, 1)
        wait_for(lambda: dt.datetime.now(ZONE) > when + dt.timedelta(seconds=0.2), 10,
                 "the time")
        d.start()
        wait_for(lambda: len(srv.messages) == 14, 20, "the late campaign")
        d.stop()
        d.start()  # a second start must not send it again
        # Its first pass over the table (done before "synced") found nothing to send,
        # schedule or resume.
        assert d.last_synced().endswith("event=synced jobs=0 sending=0")
        assert d.stop() == 0
    assert set(by_recipient(srv).values()) == {1}
    assert len(srv.messages) == 14


def test_restarted_past_the_late_limit_marks_it_missed(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run) -> None:
    with smtp_server() as srv:
        # 0.0002 h = 0.72 s
        d, issue = daemon_env(srv, extra="\n[schedule]\nlate_limit_hours = 0.0002\n")
        _, when = schedule_soon(run, issue, 1)
        wait_for(lambda: dt.datetime.now(ZONE) > when + dt.timedelta(seconds=1.5), 10,
                 "lateness")
        d.start()
        # Marked missed in the first pass over the table, before "synced"; nothing runs.
        assert "event=missed" in d.text()
        assert d.last_synced().endswith("event=synced jobs=0 sending=0")
        assert d.stop() == 0
    assert srv.messages == []
    assert campaigns(run)[0]["status"] == "missed"
    assert "missed" in run("schedule", "list").stdout


def test_five_restarts_keep_one_job_per_pending_campaign(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run, tmp_path: Path) -> None:
    with smtp_server() as srv:
        d, issue = daemon_env(srv)
        for n, slug in enumerate(("send-to", "report-to")):
            run("schedule", str(issue), "--at", at(3600 * (n + 1))[0], "--list", slug)
        for _ in range(5):
            d.start()
            assert d.stop() == 0
    synced = [ln for ln in d.text().splitlines() if "event=synced" in ln]
    assert len(synced) == 5 and all("jobs=2" in ln for ln in synced)
    assert [c["status"] for c in campaigns(run)] == ["pending", "pending"]
    assert srv.messages == []


def test_a_second_daemon_is_refused(daemon_env: Callable[..., tuple[Daemon, Path]],
                                    run: Run, config_file: Path) -> None:
    with smtp_server() as srv:
        d, _ = daemon_env(srv)
        d.start()
        env = {**os.environ, "MAILER_SECRET": SECRET, "PYTHONPATH": str(REPO)}
        second = subprocess.run(
            [sys.executable, "-m", "mailer", "--config", str(config_file), "run"],
            capture_output=True, text=True, env=env, timeout=30,
        )
        assert d.stop() == 0
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        next(ln for ln in second.stderr.splitlines() if ln.startswith("Error: "))]
    assert "already running" in second.stderr and "Traceback" not in second.stderr


# --- stopping, pausing, cancelling ----------------------------------------------------


def test_sigterm_mid_campaign_then_restart_misses_nobody(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run) -> None:
    with smtp_server(Behaviour(pipelining=True)) as srv:
        # 100 recipients at 25/s: after the first 10, 3.6 s for the SIGTERM to land
        # before the end, on a loaded machine too.
        d, issue = daemon_env(srv, rate=25, recipients=86)
        d.start()
        schedule_soon(run, issue)
        wait_for(lambda: len(srv.messages) >= 10, 20, "sending to begin")
        assert d.stop(signal.SIGTERM) == 0  # finishes what is in flight, exits 0
        stopped_at = len(srv.messages)
        assert stopped_at < 100
        assert campaigns(run)[0]["status"] == "sending"
        d.start()
        wait_for(lambda: len(by_recipient(srv)) == 100, 30, "the rest after restart")
        assert d.stop() == 0
    counts = by_recipient(srv)
    assert len(counts) == 100  # nobody missed
    assert sum(n - 1 for n in counts.values()) <= 4  # at most one per connection
    assert "event=resumed" in d.text()


def test_pause_stops_smtp_traffic_at_once(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run) -> None:
    with smtp_server(Behaviour(pipelining=True)) as srv:
        d, issue = daemon_env(srv, rate=30, recipients=86)
        d.start()
        schedule_soon(run, issue)
        wait_for(lambda: len(srv.messages) >= 10, 20, "sending to begin")
        run("pause", "1")
        paused_at = len(srv.messages)
        # The run sees the pause at its next commit (every few messages) or claim,
        # gives back what is queued and ends once the messages in hand are
        # answered: a count, not a time window.
        wait_for(lambda: "event=run.ended" in d.text(), 20, "the run to end")
        after_the_run = len(srv.messages)
        # At most what the 4 connections had in hand and queued (2 each) at the pause.
        assert after_the_run - paused_at <= 3 * 4
        # Nothing more while paused, over five of the daemon's passes.
        time.sleep(5 * POLL)
        assert len(srv.messages) == after_the_run
        assert campaigns(run)[0]["status"] == "paused"
        run("resume", "1")
        wait_for(lambda: len(by_recipient(srv)) == 100, 30, "the rest after resume")
        assert d.stop() == 0
    assert len(srv.messages) == 100


def test_cancel_before_the_time_sends_nothing(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run) -> None:
    with smtp_server() as srv:
        d, issue = daemon_env(srv)
        d.start()
        # Far enough ahead that scheduling and cancelling (each seen at the daemon's
        # next pass) are done before the time, on a loaded machine too: the lead
        # grows with what a CLI command takes right now.
        t0 = time.monotonic()
        run("schedule", "list")
        _, when = schedule_soon(run, issue, 3 + 4 * (time.monotonic() - t0))
        wait_for(lambda: "event=scheduled" in d.text(), 10, "the job")
        run("schedule", "cancel", "1")
        wait_for(lambda: "event=unscheduled" in d.text(), 10, "the job to go")
        assert dt.datetime.now(ZONE) < when, "cancelled too late to tell"
        wait_for(lambda: dt.datetime.now(ZONE) > when + dt.timedelta(seconds=1.5), 20,
                 "the time")
        assert d.stop() == 0
    assert srv.messages == []
    assert campaigns(run)[0]["status"] == "cancelled"
    assert "event=unscheduled" in d.text()


def test_schedule_refuses_the_past_and_a_failing_issue(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run, tmp_path: Path) -> None:
    with smtp_server() as srv:
        _, issue = daemon_env(srv)
    past = run("schedule", str(issue), "--at", at(-60)[0], ok=False)
    assert past.exit_code == 1 and "is in the past" in past.stderr
    broken = tmp_path / "broken.txt"
    broken.write_text(SAMPLE_ISSUE.read_text(encoding="utf-8").replace(
        "2015 年 11 月 24 日", ""), encoding="utf-8")
    bad = run("schedule", str(broken), "--at", at(3600)[0], ok=False)
    assert bad.exit_code == 1 and "mailer issue check" in bad.stderr
    assert campaigns(run) == []


def test_approval_is_required_when_configured(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run) -> None:
    with smtp_server() as srv:
        d, issue = daemon_env(srv, extra="\n[schedule]\nrequire_approval = true\n")
        d.start()
        result, when = schedule_soon(run, issue, 1)
        out = result.stdout
        assert "mailer approve 1" in out
        wait_for(lambda: dt.datetime.now(ZONE) > when + dt.timedelta(seconds=1.5), 10, "time")
        assert srv.messages == []  # not approved: not sent
        run("approve", "1")
        wait_for(lambda: len(srv.messages) == 14, 20, "the approved campaign")
        assert d.stop() == 0
    assert campaigns(run)[0]["approved_by"]
    events = json.loads(run("history", "--json").stdout)
    assert any(e["kind"] == "campaign.approved" for e in events)


# --- the watched folder ---------------------------------------------------------------


def markdown_issue(tmp_path: Path, run: Run, send_at: str) -> str:
    """The sample converted to Markdown, with send_at in its front matter."""
    md = tmp_path / "sample.md"
    run("issue", "convert", str(tmp_path / "bulletin.txt"), "-o", str(md), "--force")
    return md.read_text(encoding="utf-8").replace("+++\n", f"+++\nsend_at = {send_at}\n", 1)


def test_watched_folder_schedules_reschedules_and_refuses(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run, tmp_path: Path) -> None:
    folder = tmp_path / "issues"
    folder.mkdir()
    with smtp_server() as srv:
        d, _ = daemon_env(srv, extra=f'\n[schedule]\nissues_dir = "{folder}"\n')
        d.start()
        later = at(3600)[1].strftime("%Y-%m-%dT%H:%M:%S")
        target = folder / "2015-09.md"
        target.write_text(markdown_issue(tmp_path, run, later), encoding="utf-8")
        wait_for(lambda: "event=issue.scheduled" in d.text(), 10, "the file to be scheduled")
        # Edited before its time: rescheduled to 2 s from now.
        soon = reschedule_soon(d, lambda when: target.write_text(
            markdown_issue(tmp_path, run, when.strftime("%Y-%m-%dT%H:%M:%S")),
            encoding="utf-8"))
        wait_for(lambda: len(srv.messages) == 14, 20, "the rescheduled campaign")
        # Sent, not still sending: the last replies are recorded a moment after the
        # server has the last message.
        wait_for(lambda: "event=finished" in d.text(), 20, "the campaign to finish")
        # Edited after sending: refused, logged, not sent again.
        edited = markdown_issue(tmp_path, run, soon.strftime("%Y-%m-%dT%H:%M:%S"))
        target.write_text(edited.replace("协会承办。", "协会承办！"), encoding="utf-8")
        wait_for(lambda: "event=issue.not_scheduled" in d.text(), 10, "the refusal")
        # A file that fails the check is reported and not scheduled.
        (folder / "broken.md").write_text("+++\ntitle = 1\n+++\n", encoding="utf-8")
        wait_for(lambda: "broken.md" in d.text(), 10, "the broken file report")
        assert d.stop() == 0
    assert len(srv.messages) == 14
    rows = campaigns(run)
    assert len(rows) == 1 and rows[0]["status"] == "sent"
    assert "already sent" in d.text() or "is already sent" in d.text()
    assert "event=issue.rejected" in d.text() or "event=issue.unreadable" in d.text()


def test_an_edited_word_file_in_the_watched_folder_reschedules(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run, tmp_path: Path) -> None:
    from .word_issue import Style, set_send_at, write_word

    folder = tmp_path / "issues"
    folder.mkdir()
    drafts = tmp_path / "drafts"
    drafts.mkdir()
    target = folder / "2015-09.docx"

    def save(when: dt.datetime) -> None:
        """As Word saves: the whole file written anew beside, then put in place; its
        send_at in the custom document property."""
        draft = write_word(drafts / target.name, Style())
        set_send_at(draft, when.strftime("%Y-%m-%d %H:%M:%S"))
        os.replace(draft, target)

    with smtp_server() as srv:
        d, _ = daemon_env(srv, extra=f'\n[schedule]\nissues_dir = "{folder}"\n')
        d.start()
        later = at(3600)[1]
        save(later)
        wait_for(lambda: "event=issue.scheduled" in d.text(), 10, "the Word file to be scheduled")
        [row] = campaigns(run)
        assert row["status"] == "pending" and later.strftime("%Y-%m-%d %H:%M") in str(row["at"])
        # Saved again in Word with another time, before the first: rescheduled.
        soon = reschedule_soon(d, save)
        wait_for(lambda: len(srv.messages) == 14, 20, "the rescheduled campaign")
        assert d.stop() == 0
    [row] = campaigns(run)
    assert row["status"] == "sent" and soon.strftime("%Y-%m-%d %H:%M") in str(row["at"])
    # Refused only as past, if a loaded machine made reschedule_soon save it again.
    assert all("is in the past" in ln for ln in d.text().splitlines()
               if "event=issue.not_scheduled" in ln), d.text()


# --- the web app runs inside the daemon ------------------------------------------------


def test_daemon_serves_one_click_unsubscribe(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run, config_file: Path) -> None:
    import email
    import email.policy

    with smtp_server() as srv:
        d, issue = daemon_env(srv)
        d.start()
        schedule_soon(run, issue)
        wait_for(lambda: len(srv.messages) == 14, 20, "the campaign")
        msg = email.message_from_bytes(srv.messages[0].data, policy=email.policy.default)
        url = str(msg["List-Unsubscribe"]).split(">")[0].lstrip("<")
        port = int(config_file.read_text().split("[web]\nport = ")[1].split("\n")[0])
        local = f"http://127.0.0.1:{port}{url[url.index('/u/'):]}"
        r = httpx.post(local, content=b"List-Unsubscribe=One-Click",
                       headers={"content-type": "application/x-www-form-urlencoded"},
                       timeout=10)
        assert r.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        assert d.stop() == 0
    who = srv.messages[0].rcpt_tos[0]
    history = run("history", who).stdout
    assert "unsubscribed" in history and "web" in history


def test_one_click_during_a_running_campaign_stops_that_address(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run, config_file: Path) -> None:
    import sqlite3

    from mailer.config import SigningKey
    from mailer.tokens import make_token

    db = config_file.parent / "data" / "mailer.db"
    with smtp_server(Behaviour(pipelining=True)) as srv:
        d, issue = daemon_env(srv, rate=20, recipients=86)  # 100 recipients, ~5 s
        d.start()
        schedule_soon(run, issue)
        wait_for(lambda: len(srv.messages) >= 10, 20, "sending to begin")
        conn = sqlite3.connect(db)
        # The pending delivery furthest from being claimed: surely not in flight yet.
        email, uid = conn.execute(
            "SELECT d.email, r.uid FROM deliveries d JOIN recipients r ON r.id = d.recipient_id "
            "WHERE d.status = 'pending' ORDER BY d.id DESC LIMIT 1").fetchone()
        conn.close()
        token = make_token(SigningKey("k1", SECRET.encode()), uid, "send-to")
        port = int(config_file.read_text().split("[web]\nport = ")[1].split("\n")[0])
        r = httpx.post(f"http://127.0.0.1:{port}/u/{token}",
                       content=b"List-Unsubscribe=One-Click",
                       headers={"content-type": "application/x-www-form-urlencoded"},
                       timeout=10)
        assert r.status_code == 200
        wait_for(lambda: campaigns(run)[0]["status"] == "sent", 30, "the campaign to finish")
        assert d.stop() == 0
    received = by_recipient(srv)
    assert email not in received
    assert len(received) == 99
    rows = json.loads(run("log", "1", "--json").stdout)
    row = next(x for x in rows if x["email"] == email)
    assert row["status"] == "unsubscribed"


# --- one log format ------------------------------------------------------------------

# The one format: local time, level, [campaign=N] event=NAME, then key=value fields
# whose values are bare or double-quoted with backslash escapes. Nothing else.
LOG_LINE = re.compile(
    r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) '
    r'(?:campaign=\d+ )?event=[\w.]+(?: [\w.]+=(?:"(?:[^"\\]|\\.)*"|[^\s"=\\]+))*'
)


def assert_one_format(text: str, *secrets: str) -> list[str]:
    lines = text.splitlines()
    assert lines
    for line in lines:
        assert LOG_LINE.fullmatch(line), f"not in the one log format: {line!r}"
        assert "\x1b" not in line
    for secret in secrets:
        assert secret not in text
    return lines


def test_every_daemon_line_is_in_one_format_and_no_token_is_logged(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run, config_file: Path) -> None:
    import email
    import email.policy

    with smtp_server() as srv:
        d, issue = daemon_env(srv)
        text = config_file.read_text(encoding="utf-8")
        port = int(text.split("[web]\nport = ")[1].split("\n")[0])
        config_file.write_text(text.replace("[web]\n", '[web]\ntrusted_proxies = ["127.0.0.1"]\n',
                                            1), encoding="utf-8")
        d.start()
        schedule_soon(run, issue)
        wait_for(lambda: "event=finished" in d.text(), 20, "the campaign")
        msg = email.message_from_bytes(srv.messages[0].data, policy=email.policy.default)
        url = str(msg["List-Unsubscribe"]).split(">")[0].lstrip("<")
        token = url[url.index("/u/") + 3:]
        base = f"http://127.0.0.1:{port}"
        forwarded = {"x-forwarded-for": "198.51.100.1, 203.0.113.7"}
        assert httpx.get(f"{base}/u/{token}", headers=forwarded, timeout=10).status_code == 200
        r = httpx.post(f"{base}/u/{token}?again={token}", content=b"List-Unsubscribe=One-Click",
                       headers={"content-type": "application/x-www-form-urlencoded",
                                **forwarded}, timeout=10)
        assert r.status_code == 200
        assert httpx.get(f"{base}/u/{token[:-3]}AAA", timeout=10).status_code == 404
        # A request that is not HTTP at all: uvicorn's warning comes out in the format too.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"NOT HTTP\r\n\r\n")
            s.recv(1024)
        assert d.stop() == 0
    lines = assert_one_format(d.text(), token, token.split(".")[-1])
    http = [line for line in lines if " event=http " in line]
    assert len(http) == 3
    assert all("path=/u/[redacted]" in line for line in http)
    assert sum("client=203.0.113.7" in line for line in http) == 2
    assert "event=http method=POST path=/u/[redacted]?[redacted] status=200" in d.text()
    for expected in ("event=daemon.started", "campaign=1 event=started", "event=unsubscribed",
                     'logger=uvicorn.error msg="Started server process',
                     'WARNING event=log logger=uvicorn.error msg="Invalid HTTP request received."',
                     "event=daemon.stopped"):
        assert any(expected in line for line in lines), expected


def test_serve_command(run: Run, config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mailer serve --host --port`: the unsubscribe pages on their own, stopped by SIGTERM."""
    monkeypatch.setenv("MAILER_SECRET", SECRET)
    run("init")
    port = free_port()
    env = {**os.environ, "MAILER_SECRET": SECRET, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config_file), "serve",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, 20, "mailer serve to answer")
        assert httpx.get(f"http://127.0.0.1:{port}/u/v1.k1.bm9wZQ.AAAAAAAAAAAAAAAAAAAAAA",
                         timeout=5).status_code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert proc.stderr is not None
        lines = assert_one_format(proc.stderr.read().decode(), "bm9wZQ")
        assert any("event=http method=GET path=/u/[redacted] status=404" in line
                   for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        assert proc.stderr is not None
        proc.stderr.close()


def test_schedule_takes_a_list_named_twice_once(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run) -> None:
    with smtp_server() as srv:
        _, issue = daemon_env(srv)
    out = run("schedule", str(issue), "--at", at(3600)[0], "--list", "send-to",
              "--list", "send-to").stdout
    assert "→ send-to at" in out
    assert [c["lists"] for c in campaigns(run)] == ["send-to"]
