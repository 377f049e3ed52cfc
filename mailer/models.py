"""Dataclasses and enums shared by the steps of the flow (parse, render, send, store).

Names follow the bulletin's own words: an ``Issue`` has a ``Masthead``, ``Article``s
made of ``Block``s, and an ``EndBlock`` (报尾) whose lines name who it is reported
(报) and sent (发) to.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .validate import Address

from .numerals import number_value

# --- the bulletin -------------------------------------------------------------


class BlockKind(enum.StrEnum):
    """What a block inside an article is."""

    SECTION = "section"  # 一、以目标管理为手段……
    SUBSECTION = "subsection"  # （一）……
    PARAGRAPH = "paragraph"  # body text, including numbered paragraphs (1. / 1、)
    IMAGE = "image"  # a picture from a Word issue; ``Block.image`` holds it


@dataclass(frozen=True)
class Image:
    """A picture in an article, sent inside the email as an inline part (``cid:``).

    ``name`` says where staff find it (``image1.png, paragraph 30``); ``width`` and
    ``height`` are CSS pixels as placed in the document (0 when unknown)."""

    data: bytes = field(repr=False)
    content_type: str  # image/png, image/jpeg, image/gif
    name: str
    width: int = 0
    height: int = 0

    @property
    def cid(self) -> str:
        """The Content-ID the HTML names it by: the same bytes, the same id."""
        return f"img-{hashlib.sha256(self.data).hexdigest()[:16]}@mailer"


@dataclass(frozen=True)
class Span:
    """A run of text inside a block; ``bold`` for **…** runs, ``href`` for a safe link."""

    text: str
    bold: bool = False
    href: str | None = None


@dataclass(frozen=True)
class Block:
    """A heading or a paragraph. ``line`` (1-based, in the source) is for error messages
    only and takes no part in equality, so a converted issue compares equal."""

    kind: BlockKind
    spans: tuple[Span, ...]
    line: int = field(default=0, compare=False)
    image: Image | None = None  # for an IMAGE block (its spans are empty)

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.spans)


@dataclass(frozen=True)
class Article:
    """One article (☆… in the plain text, ``## `` in Markdown)."""

    title: str
    blocks: tuple[Block, ...]
    line: int = field(default=0, compare=False)

    @property
    def section_count(self) -> int:
        return sum(1 for b in self.blocks if b.kind is BlockKind.SECTION)


class EndKind(enum.StrEnum):
    """What a line of the end block (版记) is."""

    NAMES = "names"  # 报：… / 报送：… / 抄送：… / 发：…: a label and the bodies it names
    ISSUED = "issued"  # 杭州市“两新”党务工作者协会秘书处　2015年11月24日印发
    COPIES = "copies"  # （共印 50 份）


END_LABELS = ("报", "报送", "抄报", "送", "抄送", "主送", "发")
"""The labels of the end block's ``NAMES`` lines, as bulletins write them."""

ISSUED_LABEL = "印发"
COPIES_LABEL = "共印"


@dataclass(frozen=True)
class EndLine:
    """One line of the end block (版记), kept as the issue wrote it.

    ``NAMES``: ``label`` is one of ``END_LABELS`` (or a list's footer label), ``text``
    what follows the colon as written, ``names`` the bodies it names, in order.
    ``ISSUED``: ``label`` is 印发, ``text`` the issuing body and ``date`` the date, both
    as written. ``COPIES``: ``label`` is 共印 and ``text`` the line as written
    (``（共印 50 份）``).
    """

    label: str
    text: str
    names: tuple[str, ...] = ()
    kind: EndKind = EndKind.NAMES
    date: str = ""

    @property
    def written(self) -> str:
        """The line as the bulletin prints it, on one line."""
        if self.kind is EndKind.ISSUED:
            return f"{self.text}　{self.date}印发" if self.date else f"{self.text}印发"
        if self.kind is EndKind.COPIES:
            return self.text
        return f"{self.label}：{self.text or '、'.join(self.names)}"


def copies_line(copies: int) -> EndLine:
    """The copies line for a count alone: ``（共印 50 份）``."""
    return EndLine(COPIES_LABEL, f"（共印 {copies} 份）", kind=EndKind.COPIES)


@dataclass(frozen=True)
class EndBlock:
    """The end block (版记): its lines in the issue's order, and the copies printed.

    ``copies`` and a ``COPIES`` line go together: a block made with only a count gets
    the line ``（共印 N 份）`` at its end, and the count is that of the last copies line,
    so two blocks that print the same compare equal.
    """

    lines: tuple[EndLine, ...] = ()
    copies: int | None = None  # 共印 N 份

    def __post_init__(self) -> None:
        written = [ln for ln in self.lines if ln.kind is EndKind.COPIES]
        if written:
            counted = _copies_count(written[-1].text)
            if counted is not None:
                object.__setattr__(self, "copies", counted)
        elif self.copies is not None:
            object.__setattr__(self, "lines", (*self.lines, copies_line(self.copies)))

    def line(self, label: str) -> EndLine | None:
        """The first ``NAMES`` line with ``label`` (报, 发, …)."""
        return next((ln for ln in self.named if ln.label == label), None)

    @property
    def named(self) -> tuple[EndLine, ...]:
        """The lines that name bodies (报：…, 发：…), in order."""
        return tuple(ln for ln in self.lines if ln.kind is EndKind.NAMES)


def _copies_count(text: str) -> int | None:
    """The count of a copies line as written: 共印 50 份, （共印五十份）."""
    inner = text.strip("（）() ").removeprefix(COPIES_LABEL).removesuffix("份")
    return number_value(inner)


@dataclass(frozen=True)
class Masthead:
    """The 报头: everything above the contents."""

    notice: str  # 内部刊物 注意保存 (as written, lines joined by one space)
    organisation: str  # 杭州市新经济与新社会组织党务工作者协会
    title: str  # 简 报
    year: int
    number: int  # 第 9 期
    total_number: int | None  # 总第 33 期
    publisher: str  # 杭州市“两新”党务工作者协会编印
    date: dt.date | None  # 2015 年 11 月 24 日; None is reported by `issue check`


@dataclass(frozen=True)
class Issue:
    """A parsed bulletin issue: the same object whether it came from .txt or .md."""

    masthead: Masthead
    contents: tuple[str, ...]  # 【本期导读】 entries, without their "1、" numbers
    articles: tuple[Article, ...]
    end: EndBlock
    send_at: dt.datetime | None = None  # Markdown front matter only

    @property
    def subject_label(self) -> str:
        """``简报 2015年第9期（总第33期）``: the usual way to name an issue."""
        m = self.masthead
        total = f"（总第{m.total_number}期）" if m.total_number is not None else ""
        return f"{m.title.replace(' ', '')} {m.year}年第{m.number}期{total}"


# --- recipients and lists -----------------------------------------------------


class UnitKind(enum.StrEnum):
    MEMBER = "member"  # member unit (会员单位), on the send-to list
    AUTHORITY = "authority"  # superior body (上级单位), on the report-to list


class Role(enum.StrEnum):
    """A list's role in the end block."""

    REPORT_TO = "report-to"  # 报
    SEND_TO = "send-to"  # 发
    COPY_TO = "copy-to"  # 送 / 抄送

    @property
    def rank(self) -> int:
        """Where lists of this role come, lowest first: report-to (报), then copy-to
        (送/抄送), then send-to (发). The end block prints its lines in this order, and
        an address on two lists of a campaign gets its one copy as the earlier list.
        Sort with ``key=lambda ml: ml.role.rank`` (stable: equal roles keep their order).
        """
        return _ROLE_ORDER.index(self)


_ROLE_ORDER = (Role.REPORT_TO, Role.COPY_TO, Role.SEND_TO)


class Status(enum.StrEnum):
    """Why mail to an address on a list flows or stops; rows are never deleted."""

    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    REMOVED_BY_STAFF = "removed_by_staff"


def may_unsubscribe(role: Role, allow_unsubscribe: bool) -> bool:
    """Whether members of a list unsubscribe themselves: report-to (报) bodies are
    official recipients whatever the setting says; staff change them."""
    return allow_unsubscribe and role is not Role.REPORT_TO


@dataclass(frozen=True)
class MailingList:
    id: int
    slug: str
    role: Role
    title: str
    footer_label: str
    allow_unsubscribe: bool

    @property
    def may_unsubscribe(self) -> bool:
        return may_unsubscribe(self.role, self.allow_unsubscribe)


@dataclass(frozen=True)
class Unit:
    id: int
    name: str
    kind: UnitKind
    group: str | None  # 片组


@dataclass(frozen=True)
class Member:
    """A recipient's subscription to one list, joined with its unit: one row of
    ``recipients list`` and of a campaign's audience."""

    recipient_id: int
    email: str
    name: str | None
    unit: str
    group: str | None
    list_slug: str
    status: Status
    changed_at: str
    source: str


@dataclass(frozen=True)
class ImportRow:
    """One validated row of a recipients file, as the store takes it. ``list_slug``
    and ``status`` come from the file's own columns (an export read back), if any."""

    line: int
    address: Address
    name: str | None
    unit: str
    group: str | None
    list_slug: str | None = None
    status: Status | None = None


@dataclass(frozen=True)
class Event:
    """One entry of the audit trail."""

    id: int
    at: str
    actor: str
    kind: str
    subject: str  # an email address, a unit name, a list slug
    unit: str | None
    list: str | None
    detail: dict[str, object]  # before/after values, source, reason


# --- campaigns and deliveries ---------------------------------------------------


class CampaignStatus(enum.StrEnum):
    PENDING = "pending"  # scheduled, waiting for its time (or for approval)
    SENDING = "sending"
    PAUSED = "paused"  # by staff; a quota pause keeps SENDING with a resume time
    SENT = "sent"  # nothing left to try (some deliveries may have failed)
    MISSED = "missed"  # its time passed beyond the late limit while nothing ran
    CANCELLED = "cancelled"
    FAILED = "failed"  # could not be prepared (its issue file gone, changed or broken)


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # claimed by a sender, reply not yet recorded
    SENT = "sent"  # the server answered 250 to DATA
    DEFERRED = "deferred"  # 4xx, 552, dropped or timed out: retried later
    FAILED = "failed"  # permanent refusal, or retries ran out
    UNSUBSCRIBED = "unsubscribed"  # the subscription stopped before it was sent


@dataclass(frozen=True)
class Campaign:
    id: int
    issue_id: int
    issue_label: str  # 简报 2015年第9期（总第33期）
    lists: tuple[str, ...]
    status: CampaignStatus
    scheduled_at: str | None
    started_at: str | None
    finished_at: str | None
    created_at: str
    created_by: str
    approved_by: str | None
    source_path: str | None
    source_sha256: str | None
    resume_at: str | None  # a quota pause: when sending may continue
    counts: dict[str, int] = field(default_factory=dict)  # delivery status -> rows
    reason: str | None = None  # why it was missed or failed


@dataclass(frozen=True)
class Delivery:
    """One recipient of one campaign: the ledger row, joined with its unit."""

    id: int
    campaign_id: int
    recipient_id: int
    uid: str
    email: str
    name: str | None
    unit: str
    list_slug: str
    status: DeliveryStatus
    attempts: int
    message_id: str | None
    last_code: int | None
    last_response: str | None
    sent_at: str | None
    updated_at: str | None
    # What came back by mail later (mailer.bounces): when, the kind (hard, soft,
    # policy, complaint) and the reply; None while nothing came back.
    bounce_at: str | None = None
    bounce_kind: str | None = None
    bounce_text: str | None = None
