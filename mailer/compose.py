"""From an issue to what a campaign sends: rendered once per list, prepared once per
(list, 8BITMIME or not), personalised per recipient by the sender.

The end block (版记) is the issue's own, printed as written; ``warnings`` says where
its lines and the lists disagree (``mailer.endblock``). Only an issue with no end
block gets one printed from the lists.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config, default_pdf_mode
from .endblock import printed
from .errors import IssueError
from .issue import parse_file
from .message import Attachment, MessageParts, PreparedMessage, is_wire_url
from .models import EndBlock, Issue, MailingList
from .pdf import PdfFailed, Typesetting, typeset
from .render import (
    UNSUBSCRIBE_PLACEHOLDER,
    WEB_EDITION_PLACEHOLDER,
    Audience,
    Rendered,
    render_issue,
    render_print,
    render_web,
)
from .store import Store
from .tokens import LinkSigner, Signer, edition_url, unsubscribe_url


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_issue(path: Path) -> tuple[Issue, str]:
    """Parse an issue file that must be fit to send: any error refuses it."""
    result = parse_file(path)
    errors = result.errors
    if errors:
        first = errors[0]
        where = f"{first.place}: " if first.place else ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise IssueError(
            f"{path.name}: {where}{first.message}{more}; see `mailer issue check {path}`"
        )
    return result.issue, file_sha256(path)


def record_issue(store: Store, issue: Issue, sha256: str) -> int:
    m = issue.masthead
    return store.record_issue(
        year=m.year, number=m.number, total_number=m.total_number,
        date=m.date.isoformat() if m.date else None, label=issue.subject_label, sha256=sha256,
    )


# A list's links per recipient uid (``Outbox.links``).
_LinkMaker = Callable[[str], tuple[str | bytes | None, str | bytes | None]]


@dataclass
class Outbox:
    """One issue, ready to send to some lists."""

    issue: Issue
    source: Path | None
    sha256: str
    lists: tuple[MailingList, ...]
    end: EndBlock
    warnings: list[str]
    config: Config
    date: dt.datetime
    rendered: dict[str, Rendered] = field(default_factory=dict)
    _prepared: dict[tuple[str, bool], PreparedMessage] = field(default_factory=dict)
    _signing: Signer | None = None
    _unsubscribing: dict[str, bool] = field(default_factory=dict)  # may_unsubscribe by slug
    _links: dict[str, _LinkMaker] = field(default_factory=dict)  # by slug
    issue_id: int | None = None  # the issues row, once recorded (or reopened)
    # PDF editions by the hash of the print HTML they were typeset from: lists whose
    # print HTML is the same share one PDF, typeset once (or read back from the store).
    _pdfs: dict[str, bytes] = field(default_factory=dict)
    # PDF editions being typeset in a child process (``typeset_editions``), same keys.
    _typesetting: dict[str, Typesetting] = field(default_factory=dict)

    def audience(self, slug: str) -> Audience:
        ml = self._list(slug)
        return Audience(
            role=ml.role, list_title=ml.title, footer_label=ml.footer_label,
            allow_unsubscribe=ml.allow_unsubscribe, contact=self.config.contact,
            pdf_link=self.pdf_mode(slug) == "link",
        )

    def pdf_mode(self, slug: str) -> str:
        """How the list's email carries the PDF edition: attach, link or none."""
        ml = self._list(slug)
        for lc in self.config.lists:
            if lc.slug == slug:
                return lc.pdf
        return default_pdf_mode(ml.role)  # a list the config no longer names

    def pdf(self, slug: str) -> tuple[str, bytes]:
        """(hash of its print HTML, bytes) of the PDF edition as ``slug`` gets it."""
        digest, html = self._print(slug)
        if digest not in self._pdfs:
            running = self._typesetting.pop(digest, None)
            self._pdfs[digest] = running.result() if running else typeset(html)
        return digest, self._pdfs[digest]

    def _print(self, slug: str) -> tuple[str, str]:
        html = render_print(self.issue, self.audience(slug), end=self.end)
        return hashlib.sha256(html.encode()).hexdigest(), html

    def typeset_editions(self, store: Store) -> None:
        """Start typesetting, each in a child process, the PDF editions this outbox's
        lists need and the store does not hold yet; ``pdf`` then waits for them. Until
        then the caller is free (a campaign writes its delivery rows meanwhile)."""
        known = self.issue_id or store.find_issue(self.issue.masthead.year,
                                                  self.issue.masthead.number)
        if known is not None:
            self.load_pdf(store, known)
        wanted = self.pdf_lists()
        # The one stored with the issue (``record_pdf``) and those attached to mail.
        for slug in dict.fromkeys(wanted[:1] + [s for s in wanted if self.pdf_mode(s) == "attach"]):
            digest, html = self._print(slug)
            if digest not in self._pdfs and digest not in self._typesetting:
                try:
                    self._typesetting[digest] = Typesetting(html)
                except PdfFailed:
                    return  # no process to be had: ``pdf`` typesets here, as it can

    def cancel_typesetting(self) -> None:
        """End the children of ``typeset_editions`` whose PDF was not taken."""
        while self._typesetting:
            self._typesetting.popitem()[1].cancel()

    def pdf_lists(self) -> list[str]:
        """The lists whose email attaches or links the PDF edition."""
        return [ml.slug for ml in self.lists if self.pdf_mode(ml.slug) != "none"]

    @property
    def pdf_filename(self) -> str:
        return f"{self.issue.subject_label}.pdf".replace(" ", "")

    def load_pdf(self, store: Store, issue_id: int) -> None:
        """Take the issue's stored PDF edition, so an unchanged issue is not typeset
        again (a reopened campaign, a second campaign of the same issue)."""
        stored = store.issue_pdf(issue_id)
        if stored is not None:
            self._pdfs.setdefault(stored[0], stored[1])

    def render(self, slug: str) -> Rendered:
        if slug not in self.rendered:
            self.rendered[slug] = render_issue(self.issue, self.audience(slug), end=self.end)
        return self.rendered[slug]

    def parts(self, slug: str) -> MessageParts:
        ml = self._list(slug)
        r = self.render(slug)
        sender = self.config.sender
        domain = sender.address.rpartition("@")[2]
        unsubscribe = ml.may_unsubscribe
        return MessageParts(
            subject=self.subject,
            html=r.html,
            text=r.text,
            from_name=sender.name,
            from_address=sender.address,
            reply_to=sender.reply_to,
            list_id=f"{ml.title} <{ml.slug}.{domain}>",
            unsubscribe_mailto=(
                f"mailto:{sender.reply_to or sender.address}?subject=unsubscribe"
                if unsubscribe else None
            ),
            html_placeholder=UNSUBSCRIBE_PLACEHOLDER,
            date=self.date,
            images=r.images,
            web_placeholder=WEB_EDITION_PLACEHOLDER,
            attachments=(
                (Attachment(self.pdf_filename, "application/pdf", self.pdf(slug)[1]),)
                if self.pdf_mode(slug) == "attach" else ()
            ),
        )

    @property
    def subject(self) -> str:
        m = self.issue.masthead
        return self.config.sending.subject.format(
            label=self.issue.subject_label, title=m.title.replace(" ", ""), year=m.year,
            number=m.number, total_number=m.total_number or "", organisation=m.organisation,
        )

    def message(self, slug: str, eight_bit: bool) -> PreparedMessage:
        """Built once per (list, 8BITMIME or not); the sender personalises it."""
        key = (slug, eight_bit)
        if key not in self._prepared:
            self._prepared[key] = PreparedMessage.build(self.parts(slug), eight_bit=eight_bit)
        return self._prepared[key]

    def unsubscribe_url(self, uid: str, slug: str) -> str | None:
        may = self._unsubscribing.get(slug)
        if may is None:  # once per list: this and the next run once per message
            may = self._unsubscribing[slug] = self._list(slug).may_unsubscribe
        if not may:
            return None
        return unsubscribe_url(self.config.web.base_url, self._signer().unsubscribe(uid, slug))

    def web_edition_url(self, uid: str, slug: str) -> str:
        """The recipient's own link to this issue's web edition (one HMAC). Made at
        the outbox's date, so every message of a run carries the same issue time and
        a revocation by staff covers all links made before it."""
        if self.issue_id is None:
            raise IssueError("the issue must be recorded before its web links are made")
        token = self._signer().edition(uid, slug, self.issue_id, self._issued)
        return edition_url(self.config.web.base_url, token)

    def links(self, uid: str, slug: str) -> tuple[str | bytes | None, str | bytes | None]:
        """The recipient's unsubscribe link (None where the list has none) and web-edition
        link, as a campaign's messages carry them: ``unsubscribe_url`` and
        ``web_edition_url`` made in one call, in wire form (``tokens.LinkSigner``).
        Where the base URL cannot go in a message as it is, or the issue is not
        recorded yet, they are made as text, which refuses each message as before."""
        make = self._links.get(slug)
        if make is None:
            make = self._link_maker(slug)
            if self.issue_id is not None:  # else made again once it is
                self._links[slug] = make
        return make(uid)

    def _link_maker(self, slug: str) -> _LinkMaker:
        def as_text(uid: str) -> tuple[str | None, str]:
            return self.unsubscribe_url(uid, slug), self.web_edition_url(uid, slug)

        if self.issue_id is None:
            return as_text
        signer = LinkSigner(self._signer(), self.config.web.base_url, slug,
                            unsubscribe=self._list(slug).may_unsubscribe,
                            edition=(self.issue_id, self._issued))
        if not all(is_wire_url(start) for start in signer.starts):
            return as_text
        return signer

    def _signer(self) -> Signer:
        if self._signing is None:  # the current key, once per outbox
            self._signing = Signer(self.config.signing_keys()[0])
        return self._signing

    @functools.cached_property
    def _issued(self) -> int:
        return int(self.date.timestamp())

    @property
    def msgid_domain(self) -> str:
        return self.config.sender.address.rpartition("@")[2]

    def record(self, store: Store) -> int:
        """The issue's row in the ledger (created or brought up to date)."""
        self.issue_id = record_issue(store, self.issue, self.sha256)
        return self.issue_id

    def record_edition(self, store: Store) -> None:
        """The web edition for each list of this outbox, stored with the issue for the
        web app to show (unchanged pages are left as they are)."""
        if self.issue_id is None:
            self.record(store)
        assert self.issue_id is not None
        pages = {ml.slug: render_web(self.issue, self.audience(ml.slug), end=self.end)
                 for ml in self.lists}
        articles = next(iter(pages.values())).articles if pages else ()
        store.record_edition(self.issue_id, {s: w.html for s, w in pages.items()}, articles)

    def record_pdf(self, store: Store) -> None:
        """The PDF edition stored with the issue, for the …/pdf link and the web
        edition's (typeset now unless ``typeset_editions`` started it); nothing when
        every list is set to "none"."""
        if self.issue_id is None:
            self.record(store)
        assert self.issue_id is not None
        wanted = self.pdf_lists()
        if wanted:
            self.load_pdf(store, self.issue_id)
            digest, data = self.pdf(wanted[0])
            store.record_pdf(self.issue_id, digest, data)

    def _list(self, slug: str) -> MailingList:
        for ml in self.lists:
            if ml.slug == slug:
                return ml
        raise IssueError(f"list {slug} is not part of this campaign")


def compose(
    issue: Issue,
    *,
    config: Config,
    store: Store,
    lists: Sequence[str],
    source: Path | None = None,
    sha256: str | None = None,
    now: dt.datetime | None = None,
) -> Outbox:
    chosen = tuple(store.get_list(slug) for slug in lists)
    end, warnings = printed(store, config, issue)
    if sha256 is None:
        sha256 = (file_sha256(source) if source
                  else hashlib.sha256(repr(issue).encode()).hexdigest())
    outbox = Outbox(
        issue=issue, source=source, sha256=sha256, lists=chosen, end=end, warnings=warnings,
        config=config, date=now or dt.datetime.now(dt.UTC),
    )
    known = store.find_issue(issue.masthead.year, issue.masthead.number)
    if known is not None:
        outbox.load_pdf(store, known)
    return outbox
