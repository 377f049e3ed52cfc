"""One bad issue, one answer: `mailer send`, `mailer schedule` and the watched folder
refuse it alike, and a campaign the daemon cannot prepare is marked failed once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from mailer.logs import quote

from .conftest import SAMPLE_ISSUE, Run, snapshot
from .smtp_server import smtp_server
from .test_daemon import Daemon, at, campaigns, daemon_env, schedule_soon, wait_for

__all__ = ["daemon_env"]  # a fixture, used by name


def test_send_schedule_and_the_watched_folder_refuse_a_bad_issue_alike(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run, tmp_path: Path,
        initialised: Path) -> None:
    folder = tmp_path / "issues"
    folder.mkdir()
    with smtp_server() as srv:
        d, _ = daemon_env(srv, extra=f'\n[schedule]\nissues_dir = "{folder}"\n')
        # A title line that could smuggle a header, and a send_at for the folder.
        text = SAMPLE_ISSUE.read_text(encoding="utf-8").replace("简 报", "简 报\u2028Bcc: x@y", 1)
        bad = folder / "bad.txt"
        bad.write_text(text, encoding="utf-8")
        before = snapshot(initialised)
        answers = []
        for args in (("send", str(bad)), ("schedule", str(bad), "--at", at(3600)[0])):
            refused = run(*args, ok=False)
            assert refused.exit_code == 1 and "Traceback" not in refused.output
            answers.append(refused.stderr.strip().splitlines()[-1].removeprefix("Error: "))
        assert answers[0] == answers[1] and "line 8" in answers[0], answers
        assert snapshot(initialised) == before
        # The folder only schedules files with a send_at: give it one, as Markdown.
        md = folder / "bad.md"
        run("issue", "convert", str(SAMPLE_ISSUE), "-o", str(md))
        md_text = md.read_text(encoding="utf-8")
        md.write_text(md_text.replace('title = "简 报"', 'title = "简 报\\u2028Bcc: x@y"', 1)
                      .replace("+++\n", f'+++\nsend_at = {at(3600)[1]:%Y-%m-%dT%H:%M:%S}\n', 1),
                      encoding="utf-8")
        md_answer = run("send", str(md), ok=False).stderr.strip().splitlines()[-1]
        d.start()
        wait_for(lambda: "file=bad.md" in d.text(), 10, "the folder's refusal")
        time.sleep(1.5)  # a few more scans: reported once, not every second
        assert d.stop() == 0
    log = d.text()
    for name, answer in (("bad.txt", answers[0]), ("bad.md", md_answer.removeprefix("Error: "))):
        lines = [ln for ln in log.splitlines() if f"file={name}" in ln]
        assert len(lines) == 1, lines
        assert "event=issue.rejected" in lines[0] and f"why={quote(answer)}" in lines[0], (
            lines[0], answer)
    assert campaigns(run) == []
    assert srv.messages == []


def test_a_campaign_the_daemon_cannot_prepare_is_failed_once_with_its_reason(
        daemon_env: Callable[..., tuple[Daemon, Path]], run: Run) -> None:
    with smtp_server() as srv:
        d, issue = daemon_env(srv)
        d.start()
        schedule_soon(run, issue, 2)
        issue.write_text(issue.read_text(encoding="utf-8") + "\n", encoding="utf-8")
        wait_for(lambda: "event=failed" in d.text(), 20, "the campaign to fail")
        time.sleep(2.5)  # the daemon syncs every second: it must not try again
        assert d.stop() == 0
    assert srv.messages == []
    assert d.text().count("event=failed") == 1
    [c] = campaigns(run)
    assert c["status"] == "failed" and "changed since it was scheduled" in str(c["note"])
    [logged] = json.loads(run("log", "--json").stdout)
    assert logged["status"] == "failed" and "changed since" in logged["note"]
