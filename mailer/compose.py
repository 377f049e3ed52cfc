"""From an issue to what a campaign sends: rendered once per list, prepared once per
(list, 8BITMIME or not), personalised per recipient by the sender.

The end block (版记) is the issue's own, printed as written; ``warnings`` says where
its lines and the lists disagree (``mailer.endblock``). Only an issue with no end
block gets one printed from the lists.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config, SigningKey
from .endblock import printed
from .errors import IssueError
from .issue import parse_file
from .message import MessageParts, PreparedMessage
from .models import EndBlock, Issue, MailingList
from .render import UNSUBSCRIBE_PLACEHOLDER, Audience, Rendered, render_issue
from .store import Store
from .tokens import make_token, unsubscribe_url


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
    _key: SigningKey | None = None

    def render(self, slug: str) -> Rendered:
        if slug not in self.rendered:
            ml = self._list(slug)
            audience = Audience(
                role=ml.role, list_title=ml.title, footer_label=ml.footer_label,
                allow_unsubscribe=ml.allow_unsubscribe, contact=self.config.contact,
            )
            self.rendered[slug] = render_issue(self.issue, audience, end=self.end)
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
        ml = self._list(slug)
        if not ml.may_unsubscribe:
            return None
        if self._key is None:
            self._key = self.config.signing_keys()[0]
        return unsubscribe_url(self.config.web.base_url, make_token(self._key, uid, slug))

    @property
    def msgid_domain(self) -> str:
        return self.config.sender.address.rpartition("@")[2]

    def record(self, store: Store) -> int:
        """The issue's row in the ledger (created or brought up to date)."""
        return record_issue(store, self.issue, self.sha256)

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
    return Outbox(
        issue=issue, source=source, sha256=sha256, lists=chosen, end=end, warnings=warnings,
        config=config, date=now or dt.datetime.now(dt.UTC),
    )
