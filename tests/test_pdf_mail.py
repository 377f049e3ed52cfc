"""The PDF edition in the mail: attached for report-to, linked for send-to (per list,
``[lists.<slug>] pdf``), typeset once per issue. Sent through the library path to a
real aiosmtpd server, the link fetched over real HTTP from the app under uvicorn, the
PDF read back with pdfplumber."""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pdfplumber
import pytest

from mailer import campaigns
from mailer import config as config_mod
from mailer.errors import ConfigError
from mailer.models import Role
from mailer.pdf import typeset_runs
from mailer.store import Store
from mailer.tokens import read_edition_token

from .conftest import CONFIG, Run, assert_one_line_error
from .edition_setup import Sent, import_lists, issue_file, send_issue
from .sample_issue import sample_issue
from .test_web import Running, secrets_env, start  # noqa: F401 (fixtures)

MEMBER = "dangban@wanhua.example.org"  # send-to
BODY = "zzb@sheng.example.org"  # report-to
PDF_LINK = re.compile(r'href="(https?://[^"]+/w/[^"]+/pdf)"[^>]*>下载 PDF 版')


def set_pdf(config_file: Path, **modes: str) -> None:
    """The test config with ``pdf`` set per list (``report_to="attach"``); a list not
    named gets its default (the key removed)."""
    body = config_file.read_text(encoding="utf-8").replace('pdf = "none"\n', "")
    for slug, mode in modes.items():
        table = f"[lists.{slug.replace('_', '-')}]\n"
        body = body.replace(table, f'{table}pdf = "{mode}"\n')
    config_file.write_text(body, encoding="utf-8")


def squeeze(text: str) -> str:
    return "".join(text.split())


def article_titles_in(pdf: bytes) -> list[int]:
    with pdfplumber.open(io.BytesIO(pdf)) as doc:
        text = squeeze("".join(p.extract_text() or "" for p in doc.pages))
    return [text.find(squeeze(a.title)) for a in sample_issue().articles]


def pdf_attachments(msg: EmailMessage) -> list[EmailMessage]:
    return [p for p in msg.iter_attachments() if p.get_content_type() == "application/pdf"]


def test_attached_for_report_to_linked_for_send_to_typeset_once(
    initialised: Path, run: Run, config_file: Path, tmp_path: Path,
    start: Callable[[], Running],  # noqa: F811
) -> None:
    set_pdf(config_file)  # the defaults: attach for report-to, link for send-to
    import_lists(run)
    sent = Sent({}, {})
    before = typeset_runs.count
    send_issue(config_file, issue_file(tmp_path, 9), ("report-to", "send-to"), sent)
    assert typeset_runs.count - before == 1, "the PDF is typeset once per issue"

    # report-to: the PDF attached, named after the issue, with the five articles.
    body_msg = sent.messages[(BODY, 9)]
    assert body_msg.get_content_type() == "multipart/mixed"
    attached = pdf_attachments(body_msg)
    assert len(attached) == 1
    assert attached[0].get_filename() == "简报2015年第9期（总第33期）.pdf"
    pdf = attached[0].get_content()
    assert isinstance(pdf, bytes) and pdf.startswith(b"%PDF-")
    where = article_titles_in(pdf)
    assert len(where) == 5 and all(w >= 0 for w in where), where
    assert body_msg.get_body(("html",)) is not None  # the bulletin is still the body
    assert "下载 PDF 版" not in body_msg.get_body(("html",)).get_content()  # type: ignore[union-attr]

    # send-to: no attachment, a personal link in both parts.
    member_msg = sent.messages[(MEMBER, 9)]
    assert member_msg.get_content_type() == "multipart/alternative"
    assert pdf_attachments(member_msg) == []
    html = member_msg.get_body(("html",))
    text = member_msg.get_body(("plain",))
    assert html is not None and text is not None
    found = PDF_LINK.search(html.get_content())
    assert found, "the send-to email does not link the PDF edition"
    link = found.group(1)
    assert link == sent.links[(MEMBER, 9)] + "/pdf"
    assert link in text.get_content()

    web = start()
    r = web.client.get(link.removeprefix(web.config.web.base_url))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"].startswith("inline; filename=")
    assert "filename*=UTF-8''" in r.headers["content-disposition"]
    assert r.headers["cache-control"] == "no-store"
    assert "noindex" in r.headers["x-robots-tag"]
    assert r.content == pdf, "the link serves the same PDF that was attached"

    # The web edition links it.
    page = web.client.get(sent.links[(MEMBER, 9)].removeprefix(web.config.web.base_url))
    assert page.status_code == 200
    assert f'href="{link}"' in page.text and "下载 PDF 版" in page.text

    # Forged and unknown tokens: the web edition's one 404.
    not_found = web.client.get("/w/forged")
    for bad in (link[:-5] + "x/pdf", link.replace("/w/", "/w/x")):
        r = web.client.get(bad.removeprefix(web.config.web.base_url))
        assert r.status_code == 404 and r.text == not_found.text

    # The same issue again (another campaign, a resumed one): read back, not retypeset.
    config = config_mod.load(config_file)
    with Store.open(config.database) as store:
        prepared = campaigns.prepare(config, store, issue_file(tmp_path, 9), ("report-to",))
        cid = campaigns.start(config, store, prepared, again=True)
        reopened = campaigns.reopen(config, store, store.campaign(cid))
        reattached = reopened.parts("report-to").attachments
    assert [a.data for a in reattached] == [pdf]
    assert typeset_runs.count - before == 1


def outbox_message(config_file: Path, slug: str) -> EmailMessage:
    import email
    import email.policy

    config = config_mod.load(config_file)
    with Store.open(config.database) as store:
        outbox = campaigns.prepare(config, store, issue_file(config_file.parent, 9),
                                   (slug,)).outbox
        data = outbox.message(slug, True).as_message(
            to_name=None, to_address=BODY, message_id="<t@example.org>",
            unsubscribe_url="https://bulletin.example.org/u/x",
            web_edition_url="https://bulletin.example.org/w/tok")
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


@pytest.mark.parametrize("mode", ["link", "none"])
def test_report_to_may_get_a_link_or_nothing_and_nothing_is_typeset(
    initialised: Path, config_file: Path, mode: str,
) -> None:
    set_pdf(config_file, report_to=mode)
    before = typeset_runs.count
    msg = outbox_message(config_file, "report-to")
    assert typeset_runs.count == before  # a link needs no PDF in the message
    assert pdf_attachments(msg) == []
    html, text = msg.get_body(("html",)), msg.get_body(("plain",))
    assert html is not None and text is not None
    linked = "https://bulletin.example.org/w/tok/pdf"
    assert (linked in html.get_content()) is (mode == "link")
    assert (linked in text.get_content()) is (mode == "link")


def test_the_pdf_key_takes_three_values_and_defaults_by_role(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.replace('pdf = "none"\n', ""), encoding="utf-8")
    path.chmod(0o600)
    cfg = config_mod.load(path)
    assert cfg.list("report-to").pdf == "attach" and cfg.list("report-to").role is Role.REPORT_TO
    assert cfg.list("send-to").pdf == "link"
    for mode in ("attach", "link", "none"):
        path.write_text(CONFIG.replace('pdf = "none"', f'pdf = "{mode}"'), encoding="utf-8")
        cfg = config_mod.load(path)
        assert cfg.list("send-to").pdf == mode and cfg.list("report-to").pdf == mode
    path.write_text(CONFIG.replace('pdf = "none"', 'pdf = "yes"', 1), encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        config_mod.load(path)
    assert "lists.send-to.pdf" in str(e.value) and "'attach', 'link', 'none'" in str(e.value)


def test_render_prints_a_recipients_own_links(
    initialised: Path, run: Run, config_file: Path, tmp_path: Path,
    start: Callable[[], Running],  # noqa: F811
) -> None:
    import_lists(run)
    issue = issue_file(tmp_path, 9)
    out = str(tmp_path / "out")
    shown = run("render", str(issue), "--out", out)
    assert "add --for EMAIL" in shown.output
    # Not yet sent: no issue row, so no links; one line says when there are.
    assert_one_line_error(run("render", str(issue), "--out", out, "--for", MEMBER, ok=False),
                          "has not been sent or scheduled yet")
    assert_one_line_error(run("render", str(issue), "--out", out, "--for", "nobody@x.org",
                              ok=False), "no recipient 'nobody@x.org'")
    sent = Sent({}, {})
    before = typeset_runs.count
    send_issue(config_file, issue, ("send-to",), sent)  # the test config: pdf = "none"
    assert typeset_runs.count == before
    assert_one_line_error(run("render", str(issue), "--out", out, "--for", BODY, ok=False),
                          "not on the list send-to", "--list")
    shown = run("render", str(issue), "--out", out, "--for", MEMBER)
    web = re.search(r"web edition link: (\S+)", shown.output)
    pdf = re.search(r"PDF edition link: (\S+)", shown.output)
    assert web and pdf and pdf.group(1) == web.group(1) + "/pdf"
    config = config_mod.load(config_file)
    claims = read_edition_token(config.signing_keys(), web.group(1).rpartition("/w/")[2],
                                now=dt.datetime.now(dt.UTC))
    with Store.open(config.database) as store:
        uid = store.uid_of(MEMBER)
    assert claims is not None
    assert (claims.uid, claims.list_slug, claims.issue_id) == (uid, "send-to",
                                                               sent.issue_ids[9])
    page = start().client.get(web.group(1).removeprefix(config.web.base_url))
    assert page.status_code == 200 and "万向职院落实党建工作责任制" in page.text
    assert "下载 PDF 版" not in page.text  # no list wanted it: none was typeset
