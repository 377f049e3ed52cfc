"""Render an ``Issue`` into the bulletin email: inline-styled HTML and a plain-text part.

Rendering runs once per (issue, audience). What changes per recipient (the unsubscribe
URL) is left as ``UNSUBSCRIBE_PLACEHOLDER`` in both parts, for ``message`` to substitute
into prepared bytes.

The templates live in the repository's ``templates/`` folder (installed as
``mailer.templates``, found by :func:`mailer.resources.templates_dir`): ``bulletin.html`` (with
``bulletin.css`` included into its ``<style>``) and ``bulletin.txt``. premailer is used
in exactly one place, :func:`inline_css`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import unicodedata
from dataclasses import dataclass

import cssutils
import jinja2
import markupsafe
import premailer

from mailer.links import is_safe_href
from mailer.models import Block, EndBlock, EndKind, Image, Issue, Masthead, Role, Span
from mailer.models import may_unsubscribe as unsubscribable
from mailer.resources import templates_dir

# cssutils logs every property it does not know (mso-*, -webkit-*) at ERROR/WARNING;
# none of it is actionable for us, and it would flood the staff CLI.
cssutils.log.setLevel(logging.CRITICAL)

UNSUBSCRIBE_PLACEHOLDER = "https://mailer.invalid/u/MAILER_UNSUBSCRIBE_TOKEN"
"""Stands for the per-recipient unsubscribe URL in ``Rendered.html`` and ``.text``.

Plain ASCII with no character that HTML escaping, premailer or URL handling would
touch, so it appears byte for byte in the output. The URL substituted for it must be
safe inside an HTML attribute (no ``"``, ``<``, ``>``; ``&`` as ``&amp;``) and must not
contain spaces.
"""

WEB_EDITION_PLACEHOLDER = "https://mailer.invalid/w/MAILER_WEB_EDITION_TOKEN"
"""Stands for the recipient's personal web-edition URL (网页版), like
``UNSUBSCRIBE_PLACEHOLDER``; every rendering of the email carries it."""

PDF_PATH = "/pdf"
"""The PDF edition's URL is the web edition's with this added (``/w/<token>/pdf``)."""

TEMPLATES_DIR = templates_dir()
TEXT_WIDTH = 72
"""Display columns of the plain-text part: 36 full-width characters."""

HTML_LINE_LIMIT = 900
"""Bytes (UTF-8) per line of ``Rendered.html``: SMTP allows 998 in an 8bit body, and
``message`` still adds CRLF and dot-stuffing."""

IMAGE_WIDTH = 600
"""CSS pixels: the widest a picture is set, the column of the 640px paper less its
margins. ``max-width:100%`` shrinks it further on a phone; the width attribute is
for mail readers that ignore CSS sizes (Outlook)."""

_RUN = 200  # characters of text between two tags, so that long paragraphs can be folded


@dataclass(frozen=True)
class Audience:
    """Who one rendering is for: one recipient list and its role in the end block."""

    role: Role  # report-to (报) or send-to (发)
    list_title: str  # 简报发送名单
    footer_label: str  # 发 / 报
    allow_unsubscribe: bool
    contact: str  # 协会秘书处 0571-00000000 secretariat@example.org
    pdf_link: bool = False  # the email links the PDF edition (下载 PDF 版)


@dataclass(frozen=True)
class Rendered:
    """One issue rendered for one audience."""

    subject: str  # 简报 2015年第9期（总第33期）
    html: str  # a complete, inline-styled HTML document
    text: str  # the plain-text alternative
    images: tuple[Image, ...] = ()  # the pictures ``html`` names by cid:, each once


def render_issue(issue: Issue, audience: Audience, *, end: EndBlock | None = None) -> Rendered:
    """Render ``issue`` for ``audience``.

    ``end`` is the end block (版记) to print: by default the issue's own, every line
    as written; the caller passes one built from the lists only for an issue that has
    none (``mailer.endblock``). An empty block prints nothing. Both parts carry
    ``UNSUBSCRIBE_PLACEHOLDER`` when the audience may unsubscribe (never on a
    report-to list, whose bodies are changed only by staff) and the secretariat's
    contact otherwise.
    """
    context = _context(issue, audience, issue.end if end is None else end)
    html = fold_lines(inline_css(_ENV.get_template("bulletin.html").render(context)))
    text = _tidy_text(_ENV.get_template("bulletin.txt").render(context))
    images = {b.image.cid: b.image for a in issue.articles for b in a.blocks if b.image}
    return Rendered(subject=issue.subject_label, html=html, text=text,
                    images=tuple(images.values()))


@functools.lru_cache(maxsize=16)  # premailer takes ~40 ms; a resumed or edited issue asks again
def inline_css(html: str) -> str:
    """Move the ``<style>`` rules of ``html`` into ``style`` attributes (premailer).

    ``@media`` rules (narrow screens, dark mode) cannot be inlined: premailer keeps them
    in a ``<style>`` block, marked ``!important`` so they beat the inline styles.
    A ``<style data-premailer="ignore">`` block is kept exactly as written. Classes are
    kept, because those media rules select on them. Nothing is fetched from the network.
    """
    inliner = premailer.Premailer(
        html,
        allow_network=False,
        strip_important=False,
        remove_classes=False,
        keep_style_tags=False,  # keep only what cannot be inlined, not the whole sheet
        disable_validation=True,  # it only complains about mso-* and -webkit-*; saves time
    )
    return str(inliner.transform(pretty_print=False))


def fold_lines(html: str, limit: int = HTML_LINE_LIMIT) -> str:
    """Break lines longer than ``limit`` bytes where a newline cannot show.

    The newline goes inside a tag, just before its closing ``>`` (``</span\n>``), which
    HTML ignores; a newline between two tags or inside CJK text could render as a space.
    Long paragraphs are written as runs of at most ``_RUN`` characters in ``<span>``s
    (see the ``runs`` filter), so every line gets such a place.
    """
    out: list[str] = []
    for line in html.split("\n"):
        if len(line.encode("utf-8")) <= limit:
            out.append(line)
            continue
        cuts = [m.end() - 1 for m in _TAG.finditer(line)]  # positions of tag-closing ">"
        start, size, last_cut = 0, 0, None
        pos = 0
        for cut in [*cuts, len(line)]:
            piece = len(line[pos:cut].encode("utf-8"))
            if size + piece > limit and last_cut is not None:
                out.append(line[start:last_cut])
                start, size = last_cut, len(line[last_cut:pos].encode("utf-8"))
                last_cut = None
            size += piece
            pos = cut
            if cut < len(line):
                last_cut = cut
        out.append(line[start:])
    return "\n".join(out)


_TAG = re.compile(r"<[A-Za-z/][^<>\"']*(?:(?:\"[^\"]*\"|'[^']*')[^<>\"']*)*>")


def _runs_filter(text: str) -> markupsafe.Markup:
    """Escape ``text``; a long one as ``<span>`` runs, giving :func:`fold_lines` room.

    Runs end only between two ideographs, where a line may break anyway, so the spans
    change nothing on screen.
    """
    if len(text) <= _RUN:
        return markupsafe.escape(text)
    runs: list[str] = []
    start = 0
    while len(text) - start > _RUN:
        cut = start + _RUN
        while cut > start + _RUN // 2 and not (_ideograph(text[cut - 1]) and _ideograph(text[cut])):
            cut -= 1
        if cut == start + _RUN // 2:  # no safe place: keep going until one turns up
            cut = start + _RUN
            while cut < len(text) and not (_ideograph(text[cut - 1]) and _ideograph(text[cut])):
                cut += 1
        runs.append(text[start:cut])
        start = cut
    runs.append(text[start:])
    return markupsafe.Markup("").join(markupsafe.Markup("<span>{}</span>").format(r) for r in runs)


def _ideograph(c: str) -> bool:
    return unicodedata.category(c) == "Lo" and unicodedata.east_asian_width(c) == "W"


# --- plain-text layout ----------------------------------------------------------

# Never at the start of a line (closing brackets and quotes, pauses, stops) ...
_CLOSING = frozenset("，。、；：？！…‥·）」』】〕〉》〗”’,.;:?!)]}%")
# ... and never at the end of one.
_OPENING = frozenset("（「『【〔〈《〖“‘([{")


@functools.cache  # an issue has a few hundred distinct characters, counted thousands of times
def char_width(c: str) -> int:
    """Display columns of one character: 2 for wide, full-width and ambiguous ones.

    Ambiguous characters (“ ” … — ·) count as wide: CJK fonts and terminals draw them
    full-width, and over-counting only makes a line a little shorter.
    """
    if unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F", "A") else 1


def display_width(text: str) -> int:
    """Display columns of ``text`` (see :func:`char_width`)."""
    return sum(char_width(c) for c in text)


def _clusters(text: str) -> list[str]:
    """Split ``text`` into pieces that a line break may go between.

    A piece is one wide character, one run of narrow non-space characters (an ASCII
    word or number is never broken) or one run of spaces. Closing punctuation is glued
    to the piece before it, opening punctuation to the piece after it, and a dash or
    ellipsis to its twin (——, ……).
    """
    atoms = re.findall(r"\s+|[^\s]", text)
    merged: list[str] = []
    for atom in atoms:
        narrow_run = (
            merged
            and not atom.isspace()
            and char_width(atom) == 1
            and not merged[-1].isspace()
            and char_width(merged[-1][-1]) == 1
        )
        if narrow_run:
            merged[-1] += atom
        else:
            merged.append(atom)
    pieces: list[str] = []
    for atom in merged:
        if pieces and not atom.isspace() and not pieces[-1].isspace():
            prev = pieces[-1]
            if (
                atom[0] in _CLOSING
                or prev[-1] in _OPENING
                or (atom[0] in "—…" and prev[-1] == atom[0])
            ):
                pieces[-1] = prev + atom
                continue
        pieces.append(atom)
    return pieces


def fill(text: str, first: str = "", rest: str = "", width: int = TEXT_WIDTH) -> list[str]:
    """Wrap ``text`` into lines of at most ``width`` display columns.

    ``first`` starts the first line (an indent or a label such as ``报：``), ``rest``
    starts the others (a hanging indent). A line breaks between CJK characters or at
    spaces, never inside an ASCII word and never before closing punctuation; only a
    single word longer than the line overflows it.
    """
    return list(_fill(text, first, rest, width))


# The same paragraphs are laid out for each list of an issue, and again when it is
# resumed or its web edition is made: each is laid out once.
@functools.lru_cache(maxsize=4096)
def _fill(text: str, first: str, rest: str, width: int) -> tuple[str, ...]:
    lines: list[str] = []
    line, used, has_text, space = first, display_width(first), False, False
    for piece in _clusters(" ".join(text.split("\n"))):
        if piece.isspace():
            space = has_text
            continue
        w = display_width(piece) + (1 if space else 0)
        if has_text and used + w > width:
            lines.append(line)
            line, used, space = rest, display_width(rest), False
            w = display_width(piece)
        line += (" " if space else "") + piece
        used += w
        has_text, space = True, False
    lines.append(line)
    return tuple(ln.rstrip() for ln in lines)


def _fill_filter(text: str, first: str = "", rest: str = "") -> str:
    return "\n".join(fill(text, first, rest))


def _center_filter(text: str) -> str:
    return "\n".join(" " * max(0, (TEXT_WIDTH - display_width(ln)) // 2) + ln for ln in fill(text))


def _right_filter(text: str) -> str:
    return "\n".join(" " * max(0, TEXT_WIDTH - display_width(ln)) + ln for ln in fill(text))


def _spread_filter(left: str, right: str) -> str:
    """``left`` and ``right`` on one line, pushed to the two margins, if they fit."""
    gap = TEXT_WIDTH - display_width(left) - display_width(right)
    if gap >= 2:
        return left + " " * gap + right
    return _fill_filter(left) + ("\n" + _right_filter(right) if right else "")


def _tidy_text(text: str) -> str:
    """No trailing spaces, at most one empty line in a row, one final newline."""
    lines = [ln.rstrip() for ln in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


# --- what the templates see ---------------------------------------------------------


@dataclass(frozen=True)
class _SpanView:
    text: str
    bold: bool
    href: str | None  # only https/mailto survive


@dataclass(frozen=True)
class _BlockView:
    kind: str  # a BlockKind value
    spans: tuple[_SpanView, ...]
    text: str  # for the plain-text part: links written out after their text
    image: _ImageView | None = None


@dataclass(frozen=True)
class _ImageView:
    src: str  # cid:…, the inline part of the message
    width: int  # HTML width attribute: as placed, at most the column; CSS scales it down
    height: int


@dataclass(frozen=True)
class _ArticleView:
    title: str
    blocks: tuple[_BlockView, ...]


@dataclass(frozen=True)
class _MastheadView:
    notice_lines: tuple[str, ...]
    organisation: str
    title: str
    issue_line: str  # 2015 年第 9 期　总第 33 期
    publisher: str
    date: str  # 2015 年 11 月 24 日, or empty


@dataclass(frozen=True)
class _EndLineView:
    kind: str  # an EndKind value
    label: str
    text: str
    date: str  # the 印发 line's date, as written


@dataclass(frozen=True)
class _FooterView:
    reason: str
    unsubscribe_url: str | None
    contact_line: str


def _span_view(span: Span) -> _SpanView:
    # The parsers already drop unsafe links; this is the second line of defence, for
    # an Issue built some other way, applied where the <a> is written.
    href = span.href if is_safe_href(span.href) else None
    return _SpanView(text=span.text, bold=span.bold, href=href)


def _block_view(block: Block) -> _BlockView:
    spans = tuple(_span_view(s) for s in block.spans)
    text = "".join(s.text + (f"（{s.href}）" if s.href and s.href != s.text else "") for s in spans)
    image = None
    if block.image is not None:
        im = block.image
        width = min(im.width or IMAGE_WIDTH, IMAGE_WIDTH)
        height = round(im.height * width / im.width) if im.width and im.height else 0
        image = _ImageView(src=f"cid:{im.cid}", width=width, height=height)
    return _BlockView(kind=block.kind.value, spans=spans, text=text, image=image)


def _masthead_view(m: Masthead) -> _MastheadView:
    issue_line = f"{m.year} 年第 {m.number} 期"
    if m.total_number is not None:
        issue_line += f"　总第 {m.total_number} 期"
    date = f"{m.date.year} 年 {m.date.month} 月 {m.date.day} 日" if m.date else ""
    return _MastheadView(
        notice_lines=tuple(m.notice.split()),
        organisation=m.organisation,
        title=m.title,
        issue_line=issue_line,
        publisher=m.publisher,
        date=date,
    )


def _footer_view(audience: Audience) -> _FooterView:
    if audience.role is Role.REPORT_TO:
        reason = f"此简报按本会{audience.list_title}（{audience.footer_label}）报送贵单位。"
    else:
        reason = (
            f"您收到此简报，是因为贵单位在本会{audience.list_title}（{audience.footer_label}）中。"
        )
    # Report-to bodies are official recipients, changed only by staff (DESIGN.md).
    may_unsubscribe = unsubscribable(audience.role, audience.allow_unsubscribe)
    return _FooterView(
        reason=reason,
        unsubscribe_url=UNSUBSCRIBE_PLACEHOLDER if may_unsubscribe else None,
        contact_line=f"联系方式：{audience.contact}",
    )


def _preheader(issue: Issue, limit: int = 90) -> str:
    """The inbox preview line, about ``limit`` characters: the first contents entries,
    or the article titles of an issue without a contents list (本期导读)."""
    if issue.contents:
        text, items = "本期导读：", [f"{i}、{e}" for i, e in enumerate(issue.contents, 1)]
    else:
        text, items = "", [a.title for a in issue.articles]
    for i, item in enumerate(items):
        if len(text) + len(item) > limit and i:
            break
        text += ("　" if i and not issue.contents else "") + item
    return text


def _context(issue: Issue, audience: Audience, end: EndBlock) -> dict[str, object]:
    return {
        "subject": issue.subject_label,
        "preheader": _preheader(issue),
        "masthead": _masthead_view(issue.masthead),
        "contents": issue.contents,
        "articles": tuple(
            _ArticleView(title=a.title, blocks=tuple(_block_view(b) for b in a.blocks))
            for a in issue.articles
        ),
        "end_lines": tuple(
            _EndLineView(kind=ln.kind.value, label=ln.label, text=ln.text or "、".join(ln.names),
                         date=ln.date)
            for ln in end.lines
        ),
        "footer": _footer_view(audience),
        "width": TEXT_WIDTH,
        "web_edition_url": WEB_EDITION_PLACEHOLDER,
        # Below the web edition's URL, so the same substitution personalises it.
        "pdf_url": WEB_EDITION_PLACEHOLDER + PDF_PATH if audience.pdf_link else None,
    }


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # bulletin.txt turns it off for itself: it is not HTML
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["runs"] = _runs_filter
    env.filters["fill"] = _fill_filter
    env.filters["center"] = _center_filter
    env.filters["right"] = _right_filter
    env.filters["spread"] = _spread_filter
    return env


_ENV = _environment()


# --- the web edition ----------------------------------------------------------------


@dataclass(frozen=True)
class WebEdition:
    """One issue as the web app shows it to one list: the bulletin's body as HTML
    (classes, no inline styles: the page's one stylesheet styles it, so a strict
    Content-Security-Policy holds) and each article's text for the archive's search."""

    html: str
    articles: tuple[tuple[str, str], ...]  # (title, plain text)


def render_web(issue: Issue, audience: Audience, *, end: EndBlock | None = None) -> WebEdition:
    """Render ``issue`` for the web edition (``templates/web/edition.html``): the same
    views as the email, without the email's table layout and footer links."""
    context = _context(issue, audience, issue.end if end is None else end)
    html = _ENV.get_template("web/edition.html").render(context)
    articles = tuple(
        (a.title, "\n".join(_block_view(b).text for b in a.blocks)) for a in issue.articles
    )
    return WebEdition(html=html, articles=articles)


# --- the PDF edition's HTML -------------------------------------------------------------


def render_print(issue: Issue, audience: Audience, *, end: EndBlock | None = None) -> str:
    """The HTML that ``mailer.pdf`` typesets into the printed 简报 (A4): the same views,
    with the 版记 of GB/T 9704-2012 §7.4 (the 抄送 line ends with 。; the last line
    names the issuing body and the date it was printed)."""
    context = _context(issue, audience, issue.end if end is None else end)
    lines: list[_EndLineView] = []
    for line in context["end_lines"]:  # type: ignore[attr-defined]
        if line.kind == EndKind.NAMES and line.label == "抄送" and not line.text.endswith("。"):
            line = dataclasses.replace(line, text=line.text + "。")
        lines.append(line)
    # The issue's own 印发 line when it has one; else one made from the masthead.
    has_issued = any(line.kind == EndKind.ISSUED for line in lines)
    m = issue.masthead
    issuer = m.publisher.removesuffix("编印").strip() or m.organisation
    printed = f"{m.date.year}年{m.date.month}月{m.date.day}日印发" if m.date else "印发"
    css = (TEMPLATES_DIR / "pdf" / "edition.css").read_text(encoding="utf-8")
    return _ENV.get_template("pdf/edition.html").render(
        context, banji_lines=lines, has_issued=has_issued, issuer=issuer, printed=printed,
        css=markupsafe.Markup(css),
    )
