"""Dataclasses and enums shared by the steps of the flow (parse, render, send, store).

Names follow the bulletin's own words: an ``Issue`` has a ``Masthead``, ``Article``s
made of ``Block``s, and an ``EndBlock`` (报尾) whose lines name who it is reported
(报) and sent (发) to.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .validate import Address

# --- the bulletin -------------------------------------------------------------


class BlockKind(enum.StrEnum):
    """What a block inside an article is."""

    SECTION = "section"  # 一、以目标管理为手段……
    SUBSECTION = "subsection"  # （一）……
    PARAGRAPH = "paragraph"  # body text, including numbered paragraphs (1. / 1、)


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


@dataclass(frozen=True)
class EndLine:
    """One line of the end block (报尾): ``label`` is 报, 送, 抄送 or 发; ``text`` is what
    follows the colon as written; ``names`` are the bodies it names, in order."""

    label: str
    text: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class EndBlock:
    lines: tuple[EndLine, ...] = ()
    copies: int | None = None  # 共印 N 份

    def line(self, label: str) -> EndLine | None:
        return next((ln for ln in self.lines if ln.label == label), None)


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
