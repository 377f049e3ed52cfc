"""The one library path from an issue file to a campaign.

``prepare`` parses, checks and composes an issue for some lists; ``start``,
``schedule`` and ``schedule_file`` (the watched folder) write the campaign;
``reopen`` gives back what a campaign was started with; ``sender`` builds the
engine's run; ``test_send`` and ``preview`` make single copies. `mailer send`,
`mailer schedule`, `mailer test-send`, `mailer render`, the daemon and the watched
folder all come through here, so one bad issue is refused with one message by all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import secrets
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .bounces.verp import VerpSigner
from .compose import Outbox, compose, file_sha256, load_issue
from .config import Config
from .errors import CampaignNotSending, InvalidInput, IssueError, SendError, UnknownRecipient
from .message import PreparedMessage, make_message_id
from .models import Campaign, CampaignStatus
from .render import PDF_PATH, UNSUBSCRIBE_PLACEHOLDER, WEB_EDITION_PLACEHOLDER
from .send import Policy, Progress, Run
from .store import Job, Store
from .tokens import make_token, unsubscribe_url
from .transport import Envelope, Outcome, Reply, SMTPSettings, SMTPTransport, send_one
from .validate import normalise_email

__all__ = [
    "EditionLinks",
    "Prepared",
    "Preview",
    "TestCopyRefused",
    "TestSent",
    "choose_lists",
    "edition_links",
    "local_time",
    "prepare",
    "preview",
    "print_edition",
    "reopen",
    "resumable",
    "schedule",
    "schedule_file",
    "sender",
    "start",
    "test_send",
]


class TestCopyRefused(SendError):
    """The relay did not take the test copy."""

    __test__ = False  # not a pytest class

    def __init__(self, address: str, reply: Reply) -> None:
        self.address, self.reply = address, reply
        answer = f"{reply.code} {reply.text}" if reply.code else reply.text
        super().__init__(f"test copy to {address} not sent: {answer}".strip())


@dataclass(frozen=True)
class Prepared:
    """An issue checked and composed for some lists, not yet a campaign."""

    outbox: Outbox
    lists: tuple[str, ...]
    audience: dict[str, int]  # list slug -> active recipients (each address once)

    @property
    def warnings(self) -> list[str]:
        """Where the issue's end block and the lists disagree, in staff words."""
        return self.outbox.warnings


def choose_lists(store: Store, lists: Sequence[str]) -> tuple[str, ...]:
    """The lists named, each once (a list named twice counted 0 recipients the
    second time), or every list; an unknown slug is refused."""
    chosen = tuple(dict.fromkeys(lists)) or tuple(ml.slug for ml in store.lists())
    for slug in chosen:
        store.get_list(slug)
    return chosen


def prepare(config: Config, store: Store, path: Path, lists: Sequence[str] = ()) -> Prepared:
    """Parse ``path`` (refused if `mailer issue check` finds an error), compose it for
    ``lists`` (default: every list) and check that it can be sent."""
    if not path.is_file():
        raise IssueError(f"{path}: no such issue file")
    issue, sha = load_issue(path)
    chosen = choose_lists(store, lists)
    outbox = compose(issue, config=config, store=store, lists=chosen, source=path.resolve(),
                     sha256=sha)
    return Prepared(outbox, chosen, store.audience(chosen))


def _check_sendable(config: Config, outbox: Outbox, lists: Sequence[str] | None = None
                    ) -> None:
    """What could still fail once a campaign is written, checked before writing it:
    the signing secret for unsubscribe links, and rendering every list's message (or
    those of ``lists``)."""
    if any(ml.may_unsubscribe for ml in outbox.lists):
        config.signing_keys()
    for slug in (ml.slug for ml in outbox.lists) if lists is None else lists:
        for eight_bit in (True, False):
            outbox.message(slug, eight_bit)


def start(config: Config, store: Store, prepared: Prepared, *, again: bool = False) -> int:
    """A campaign that sends now: its delivery rows are written; returns its id."""
    return _create(config, store, prepared, again=again, when=None)


def schedule(config: Config, store: Store, prepared: Prepared, when: dt.datetime, *,
             now: dt.datetime, again: bool = False) -> int:
    """A campaign for ``when`` (UTC); the daemon starts it then."""
    if when <= now:
        local = when.astimezone(_zone(config))
        raise InvalidInput(f"{local:%Y-%m-%d %H:%M} ({config.schedule.timezone}) is in the "
                           "past; give a later time, or send now with `mailer send`")
    return _create(config, store, prepared, again=again, when=when)


def _create(config: Config, store: Store, prepared: Prepared, *, again: bool,
            when: dt.datetime | None) -> int:
    outbox = prepared.outbox
    # WeasyPrint takes seconds (and ~120 MB) for the PDF edition: it runs in a child
    # process while this one writes the delivery rows, and is waited for just before
    # the campaign's transaction commits.
    outbox.typeset_editions(store)
    try:
        # Messages that attach the PDF are checked once it is there (below).
        attached = [s for s in prepared.lists if outbox.pdf_mode(s) == "attach"]
        _check_sendable(config, outbox, [s for s in prepared.lists if s not in attached])
        issue_id = outbox.record(store)
        # Before the campaign, so a campaign never exists without its web edition; a
        # repeat that is refused rewrites nothing (the same pages are left alone).
        outbox.record_edition(store)

        def finish() -> None:
            # In the campaign's transaction: the PDF edition (the same error as ever
            # when it cannot be typeset) commits with the campaign, or neither does.
            _check_sendable(config, outbox, attached)
            outbox.record_pdf(store)

        if when is not None:
            # No rows to write meanwhile: wait outside the transaction, so that the
            # database is not held from other writers while the PDF is typeset.
            for slug in outbox.pdf_lists():
                outbox.pdf(slug)
        return store.create_campaign(issue_id, prepared.lists, source_path=str(outbox.source),
                                     sha256=outbox.sha256, again=again, scheduled_at=when,
                                     before_commit=finish)
    finally:
        outbox.cancel_typesetting()


def schedule_file(config: Config, store: Store, prepared: Prepared, *, now: dt.datetime
                  ) -> str:
    """What the watched folder does with a new or changed issue file that has a
    ``send_at``; returns what happened, in a few words (``refused: …`` when not)."""
    outbox = prepared.outbox
    send_at = outbox.issue.send_at
    if send_at is None:
        return "ignored: no send_at"
    when = local_time(send_at, config.schedule.timezone)
    path = str(outbox.source)
    c = store.campaign_for_source(path)
    if c is not None and c.source_sha256 == outbox.sha256:
        return "ignored: unchanged"
    if c is not None and c.status is CampaignStatus.PENDING:
        if when <= now:
            return f"refused: send_at {when.isoformat()} is in the past"
        _check_sendable(config, outbox)
        store.reschedule(c.id, when, sha256=outbox.sha256, source_path=path)
        return f"rescheduled campaign {c.id} for {when.isoformat()}"
    if c is not None and c.status in (CampaignStatus.SENDING, CampaignStatus.SENT,
                                      CampaignStatus.PAUSED):
        return (f"refused: campaign {c.id} is already {c.status.value}; an edit after "
                "sending is not sent (use `mailer send FILE --again` if it must go again)")
    if when <= now:
        return f"refused: send_at {when.isoformat()} is in the past"
    cid = _create(config, store, prepared, again=c is not None, when=when)
    return f"scheduled campaign {cid} for {when.isoformat()}"


def resumable(store: Store, campaign_id: int | None) -> Campaign:
    """The campaign to resume: the one named, or the latest one left sending."""
    if campaign_id is None:
        sending = store.campaigns(statuses=[CampaignStatus.SENDING])
        if not sending:
            raise SendError("no campaign is waiting to be resumed; see `mailer log`")
        return sending[-1]
    c = store.campaign(campaign_id)
    if c.status is not CampaignStatus.SENDING:
        raise CampaignNotSending(c.id, c.status.value)
    return c


def reopen(config: Config, store: Store, campaign: Campaign) -> Outbox:
    """The outbox a campaign started (or was scheduled) with: its file must still be
    there and unchanged, so a resumed campaign sends the same message."""
    path = Path(campaign.source_path or "")
    hint = (f"put the original back, or start anew with `mailer send FILE --again` "
            f"(campaign {campaign.id} keeps its record)")
    if not campaign.source_path or not path.is_file():
        raise IssueError(f"campaign {campaign.id}: its issue file {path} is gone; {hint}")
    # The hash first: an edit that also breaks parsing is still reported as an edit.
    if file_sha256(path) != campaign.source_sha256:
        raise IssueError(f"campaign {campaign.id}: {path.name} changed since it was "
                         f"scheduled or started; {hint}")
    issue, sha = load_issue(path)
    outbox = compose(issue, config=config, store=store, lists=campaign.lists, source=path,
                     sha256=sha)
    _check_sendable(config, outbox)
    outbox.issue_id = campaign.issue_id
    return outbox


def sender(config: Config, outbox: Outbox, campaign_id: int, *, limit: int | None = None,
           wait_for_retries: bool = False,
           on_progress: Callable[[Progress], None] | None = None) -> Run:
    """The engine's run of ``campaign_id`` with the config's relay, pacing and sender
    (with ``[bounces]``, each delivery's own signed VERP envelope sender)."""
    settings = SMTPSettings.from_config(config.smtp)
    run = Run(
        database=config.database, campaign_id=campaign_id, messages=outbox.message,
        links=outbox.links, connect=lambda: SMTPTransport(settings),
        sender=config.sender.address, msgid_domain=outbox.msgid_domain,
        policy=Policy.from_config(config), limit=limit, wait_for_retries=wait_for_retries,
    )
    if on_progress is not None:
        run.on_progress = on_progress
    if config.bounces is not None:
        verp = VerpSigner(config.bounces.address, config.signing_keys())
        # One HMAC per delivery, shared by its envelope sender and its Message-ID
        # (the engine asks for the Message-ID first, then the sender).
        last: dict[int, str] = {}

        def mac(job: Job) -> str:
            if job.delivery_id not in last:
                last.clear()
                last[job.delivery_id] = verp.mac(job.campaign_id, job.recipient_id)
            return last[job.delivery_id]

        run.message_id_for = lambda job, domain: make_message_id(
            job.campaign_id, job.recipient_id, domain, mac=mac(job))
        run.sender_for = lambda job: verp.address(job.campaign_id, job.recipient_id, mac(job))
    return run


@dataclass(frozen=True)
class TestSent:
    __test__ = False  # not a pytest class

    subject: str
    address: str
    list_slug: str
    reply: Reply
    warnings: list[str]


def test_send(config: Config, store: Store, path: Path, to: str, list_slug: str) -> TestSent:
    """One copy marked 【测试】 to ``to``, logged apart from campaigns; raises
    ``TestCopyRefused`` when the relay does not take it."""
    address = normalise_email(to)
    prepared = prepare(config, store, path, (list_slug,))
    outbox = prepared.outbox
    parts = dataclasses.replace(outbox.parts(list_slug), subject=f"【测试】{outbox.subject}")
    url = None
    if parts.unsubscribe_mailto is not None:
        uid = store.uid_of(address.email)
        url = (outbox.unsubscribe_url(uid, list_slug) if uid else
               unsubscribe_url(config.web.base_url,
                               make_token(config.signing_keys()[0], "test", list_slug)))
    issue_id = outbox.record(store)
    # A test copy's web link opens nothing (the issue was not sent to that address)
    # unless it is a member's address and the issue reached them before.
    web = outbox.web_edition_url(store.uid_of(address.email) or "test", list_slug)
    message_id = f"<test.{secrets.token_hex(8)}@{outbox.msgid_domain}>"
    # base64 bodies: a test copy must arrive whatever the relay supports.
    data = PreparedMessage.build(parts, eight_bit=False).personalise(
        to_name=None, to_address=address.email, message_id=message_id, unsubscribe_url=url,
        web_edition_url=web)
    envelope = Envelope(config.sender.address, address.ascii or address.email, data)
    reply = asyncio.run(send_one(SMTPSettings.from_config(config.smtp), envelope))
    store.record_test_send(issue_id=issue_id, list_slug=list_slug, email=address.email,
                           code=reply.code, response=reply.text, message_id=message_id)
    if reply.outcome is not Outcome.SENT:
        raise TestCopyRefused(address.email, reply)
    return TestSent(outbox.subject, address.email, list_slug, reply, prepared.warnings)


@dataclass(frozen=True)
class Preview:
    """An issue as a list's recipients see it: the HTML, the text part, the message."""

    subject: str
    html: str
    text: str
    eml: bytes
    warnings: list[str]


def preview(config: Config, store: Store, path: Path, list_slug: str) -> Preview:
    prepared = prepare(config, store, path, (list_slug,))
    outbox = prepared.outbox
    rendered = outbox.render(list_slug)
    parts = outbox.parts(list_slug)
    url = f"{config.web.base_url}/u/preview" if parts.unsubscribe_mailto is not None else None
    web = f"{config.web.base_url}/w/preview"
    eml = PreparedMessage.build(parts).as_message(
        to_name="预览", to_address=config.sender.reply_to or config.sender.address,
        message_id=make_message_id(0, 0, outbox.msgid_domain), unsubscribe_url=url,
        web_edition_url=web,
    )
    return Preview(
        subject=outbox.subject,
        html=rendered.html.replace(UNSUBSCRIBE_PLACEHOLDER, url or "")
        .replace(WEB_EDITION_PLACEHOLDER, web),
        text=rendered.text.replace(UNSUBSCRIBE_PLACEHOLDER, url or "")
        .replace(WEB_EDITION_PLACEHOLDER, web),
        eml=eml, warnings=prepared.warnings,
    )


def print_edition(config: Config, store: Store, path: Path, list_slug: str) -> bytes:
    """The issue's PDF edition (A4, the printed 简报) as ``list_slug`` gets it."""
    outbox = prepare(config, store, path, (list_slug,)).outbox
    return outbox.pdf(list_slug)[1]


@dataclass(frozen=True)
class EditionLinks:
    """One recipient's own links to an issue's web and PDF editions."""

    web: str
    pdf: str


def edition_links(config: Config, store: Store, path: Path, list_slug: str,
                  email: str) -> EditionLinks:
    """The web and PDF edition URLs ``email`` gets for the issue in ``path`` as a
    member of ``list_slug`` (they open once the issue has been sent to them)."""
    address = normalise_email(email)
    outbox = prepare(config, store, path, (list_slug,)).outbox
    uid = store.uid_of(address.email)
    if uid is None:
        raise UnknownRecipient(address.email)
    if store.find_subscription(uid, list_slug) is None:
        raise InvalidInput(f"{address.email} is not on the list {list_slug}; "
                           "name its list with --list")
    m = outbox.issue.masthead
    issue_id = store.find_issue(m.year, m.number)
    if issue_id is None:
        raise IssueError(f"{outbox.issue.subject_label} has not been sent or scheduled yet, "
                         "so it has no links; they exist once it is (`mailer send FILE`)")
    outbox.issue_id = issue_id
    web = outbox.web_edition_url(uid, list_slug)
    return EditionLinks(web=web, pdf=web + PDF_PATH)


def _zone(config: Config) -> dt.tzinfo:
    return zoneinfo.ZoneInfo(config.schedule.timezone)


def local_time(value: dt.datetime, timezone: str) -> dt.datetime:
    """A naive time is in the configured time zone; the result is UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=zoneinfo.ZoneInfo(timezone))
    return value.astimezone(dt.UTC)
