"""Issues really sent through the library path (prepare, start, sender) to a real
aiosmtpd server, for the web edition and archive tests: the links tested are the
ones the emails carry."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from mailer import campaigns
from mailer import config as config_mod
from mailer.store import Store

from .conftest import REPO, SAMPLE_ISSUE, Run
from .smtp_server import smtp_server

WEB_LINK = re.compile(r'href="(https?://[^"]+/w/[^"]+)"[^>]*>点此查看网页版')


@dataclass
class Sent:
    links: dict[tuple[str, int], str]  # (email, issue number) -> 网页版 URL in the mail
    issue_ids: dict[int, int]  # issue number -> issues.id
    # (email, issue number) -> the message as that address received it
    messages: dict[tuple[str, int], EmailMessage] = field(default_factory=dict)


def issue_file(folder: Path, number: int, *, extra_article: str | None = None) -> Path:
    """The sample issue as issue ``number`` of 2015 (an optional extra article)."""
    text = SAMPLE_ISSUE.read_text(encoding="utf-8")
    text = text.replace("2015 年第 9 期 总第 33 期", f"2015 年第 {number} 期 总第 {24 + number} 期")
    if extra_article:
        text = text.replace("\n报：", f"\n☆{extra_article}\n\n{extra_article}的正文。\n\n报：", 1)
    path = folder / f"bulletin-2015-{number:02d}.txt"
    path.write_text(text, encoding="utf-8")
    return path


def import_lists(run: Run) -> None:
    run("recipients", "import", str(REPO / "recipients" / "send-to.csv"), "--list", "send-to")
    run("recipients", "import", str(REPO / "recipients" / "report-to.csv"), "--list",
        "report-to")


def send_issue(config_file: Path, path: Path, lists: tuple[str, ...], sent: Sent) -> None:
    """Send ``path`` to ``lists`` for real; record each recipient's web link."""
    with smtp_server() as srv:
        body = config_file.read_text(encoding="utf-8")
        config_file.write_text(re.sub(r"port = \d+", f"port = {srv.port}", body, count=1),
                               encoding="utf-8")
        config = config_mod.load(config_file)
        with Store.open(config.database) as store:
            prepared = campaigns.prepare(config, store, path, lists)
            cid = campaigns.start(config, store, prepared)
        progress = asyncio.run(campaigns.sender(config, prepared.outbox, cid).run())
        assert progress.failed == 0, progress
        number = prepared.outbox.issue.masthead.number
        assert prepared.outbox.issue_id is not None
        sent.issue_ids[number] = prepared.outbox.issue_id
        for m in srv.messages:
            msg = email.message_from_bytes(m.data, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            html_part = msg.get_body(("html",))
            assert html_part is not None
            found = WEB_LINK.search(html_part.get_content())
            assert found, "the email carries no 网页版 link"
            text_part = msg.get_body(("plain",))
            assert text_part is not None and found.group(1) in text_part.get_content()
            for rcpt in m.rcpt_tos:
                sent.links[(rcpt, number)] = found.group(1)
                sent.messages[(rcpt, number)] = msg
