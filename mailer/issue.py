"""Parse an issue source (plain bulletin text or Markdown) into an ``Issue``.

Two sources give the same ``Issue``: the plain text staff take out of the printed
PDF (``samples/bulletin-2015-09.txt``) and Markdown with TOML front matter, which is
what ``to_markdown`` writes for staff to edit. Parsing never raises on odd input: it
returns the ``Issue`` together with ``Problem``s (errors stop a send, warnings are
shown). Only input with no masthead at all raises ``IssueError``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import itertools
import json
import re
import tomllib
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.rules_inline.state_inline import Delimiter, Scanned, StateInline
from markdown_it.token import Token

from mailer.errors import IssueError
from mailer.models import Article, Block, BlockKind, EndBlock, EndLine, Issue, Masthead, Span

__all__ = [
    "ParseResult",
    "Problem",
    "is_safe_href",
    "parse_file",
    "parse_markdown",
    "parse_text",
    "split_names",
    "to_markdown",
]

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a source file."""

    line: int  # 1-based line in the source, 0 if not tied to a line
    message: str
    severity: Severity

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.severity}: {self.message}"


@dataclass(frozen=True)
class ParseResult:
    """The parsed issue and what is wrong with its source."""

    issue: Issue
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")


@dataclass
class _Problems:
    items: list[Problem] = field(default_factory=list)

    def error(self, line: int, message: str) -> None:
        self.items.append(Problem(line, message, "error"))

    def warning(self, line: int, message: str) -> None:
        self.items.append(Problem(line, message, "warning"))

    def sorted(self) -> tuple[Problem, ...]:
        """In source order; problems of the whole file (line 0) first."""
        return tuple(sorted(self.items, key=lambda p: p.line))


def _q(text: str, width: int = 24) -> str:
    """Quote a piece of source text for a message, shortened."""
    return repr(text if len(text) <= width else text[:width] + "…")


# --- links ----------------------------------------------------------------------


def is_safe_href(url: str) -> bool:
    """True for the only links an issue may carry: ``https://host…`` and ``mailto:…``."""
    if not url or url != url.strip() or any(c.isspace() or ord(c) < 32 for c in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    if scheme == "https":
        return bool(parts.hostname)
    return scheme == "mailto" and bool(parts.path)


class _Markdown(MarkdownIt):
    """markdown-it that lets every link through to the token stream, so that unsafe
    ones are reported (and dropped) by us rather than silently left as text."""

    def validateLink(self, url: str) -> bool:
        return True


def _emphasis(state: StateInline, silent: bool) -> bool:
    """markdown-it's emphasis rule, with ``*`` delimiters that work in Chinese text.

    CommonMark will not open ``**`` between a letter and punctuation, so
    ``工作**“两新”**党建`` stays literal; 简报 text is full of such runs. A ``*`` run
    here opens unless followed by a space and closes unless preceded by one, the
    same rule the plain-text parser uses, so both formats agree. ``_`` is unchanged.
    """
    start = state.pos
    marker = state.src[start]
    if silent or marker not in ("_", "*"):
        return False
    if marker == "_":
        scanned = state.scanDelims(start, False)
    else:
        end = start
        while end < state.posMax and state.src[end] == "*":
            end += 1
        before = state.src[start - 1] if start > 0 else " "
        after = state.src[end] if end < state.posMax else " "
        scanned = Scanned(not after.isspace(), not before.isspace(), end - start)
    for _ in range(scanned.length):
        token = state.push("text", "", 0)
        token.content = marker
        state.delimiters.append(
            Delimiter(
                marker=ord(marker),
                length=scanned.length,
                token=len(state.tokens) - 1,
                end=-1,
                open=scanned.can_open,
                close=scanned.can_close,
            )
        )
    state.pos += scanned.length
    return True


_MD = _Markdown("commonmark", {"html": False})
_MD.inline.ruler.at("emphasis", _emphasis)

# One character of block text with its formatting; "\n" stands for a line break.
_Char = tuple[str, bool, str | None]


def _group(chars: Sequence[_Char]) -> tuple[Span, ...]:
    """Merge characters into the fewest spans (so equal text gives equal spans)."""
    runs: list[list[Any]] = []
    for ch, bold, href in chars:
        if runs and runs[-1][1] == bold and runs[-1][2] == href:
            runs[-1][0] += ch
        else:
            runs.append([ch, bold, href])
    return tuple(Span(t, bold=b, href=h) for t, b, h in runs if t)


def _join_breaks(chars: Sequence[_Char]) -> list[_Char]:
    """A line break inside a paragraph joins Chinese text directly, other text by a space."""
    out: list[_Char] = []
    for i, c in enumerate(chars):
        if c[0] != "\n":
            out.append(c)
            continue
        before = chars[i - 1][0] if i else " "
        after = chars[i + 1][0] if i + 1 < len(chars) else " "
        if not (_wide(before) or _wide(after)) and before != " " and after != " ":
            out.append((" ", c[1], c[2]))
    return out


def _wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


# --- plain text -----------------------------------------------------------------

_ISSUE_RE = re.compile(
    r"^(?P<year>\d{4})\s*年\s*第\s*(?P<number>\d{1,4})\s*期\s*"
    r"(?:[(（]?\s*总\s*第\s*(?P<total>\d{1,6})\s*期\s*[)）]?)?$"
)
_DATE_RE = re.compile(r"(?P<y>\d{4})\s*年\s*(?P<m>\d{1,2})\s*月\s*(?P<d>\d{1,2})\s*日")
_CONTENTS_RE = re.compile(r"^[【\[]?\s*(?:本期导读|本期要目|本期目录|目\s*录)\s*[】\]]?\s*[:：]?$")
_STARS = ("☆", "★")
_ENTRY_MARK_RE = re.compile(r"^(?:[-*•·●▪]\s*)?(?:(?:\d{1,3}\s*[、.．)）]|[(（]\d{1,3}[)）])\s*)?")
_SECTION_RE = re.compile(r"^[一二三四五六七八九十]{1,3}、")
_SUBSECTION_RE = re.compile(r"^[(（][一二三四五六七八九十]{1,3}[)）]")
_NUMBERED_RE = re.compile(r"^(?:\d{1,3}\s*[.．、](?!\d)|[(（]\d{1,3}[)）]|\d{1,3}[)）])")
_END_RE = re.compile(r"^(?P<label>抄送|抄报|报|送|发)\s*[:：]\s*(?P<text>.*)$")
_COPIES_RE = re.compile(r"[(（]?\s*共印\s*(?P<n>\d+)\s*份\s*[)）]?$")
_RULE_RE = re.compile(r"^[-—─━_=*·.\s]{3,}$")
# Plain text may carry Markdown-style links; the URL part is ASCII with balanced parens.
_LINK_RE = re.compile(
    r"\[(?P<label>[^\[\]\n]+)\]\((?P<url>[\x21-\x27\x2a-\x7e]+"
    r"(?:\([\x21-\x27\x2a-\x7e]*\)[\x21-\x27\x2a-\x7e]*)*)\)"
)
_FINAL = set("。！？；：…”’」』!?;:.")
_OPENING = {"）": "（", ")": "(", "】": "【", "]": "["}
_CONTINUES = tuple("，,、。；;：:！!？?）)”’》")
_HEADING_MAX = 24  # a page-cut paragraph is at least one printed line; headings are shorter


def _ends_sentence(text: str) -> bool:
    t = text.rstrip().rstrip("*").rstrip()
    if not t or t[-1] in _FINAL:
        return True
    if t[-1] in _OPENING:
        # A closing bracket ends a sentence only if the bracket opened after one, as in
        # "……。（西子集团党委供稿）" or a whole-line note "（完）".
        k = t.rfind(_OPENING[t[-1]])
        return k == 0 or (k > 0 and t[k - 1] in _FINAL)
    return False


def _visible_len(text: str) -> int:
    return sum(1 for c in text if not c.isspace() and c != "*")


def _heading_like(text: str) -> bool:
    """A short line that does not end a sentence: a heading rather than half a paragraph."""
    return _visible_len(text) <= _HEADING_MAX and not _ends_sentence(text)


def _is_heading_text(text: str) -> bool:
    """一、/（一） lines are headings unless they run on into sentences."""
    body = text.rstrip()[:-1]
    return _visible_len(text) <= 60 and not any(c in "。！？；!?;" for c in body)


def _is_cut(before: str, after: str) -> bool:
    """Whether ``after`` continues the paragraph ``before`` across a page break."""
    if after.startswith(_CONTINUES):
        return True
    return not (_ends_sentence(before) or _heading_like(before) or _heading_like(after))


def parse_text(text: str) -> ParseResult:
    """Parse plain bulletin text such as ``samples/bulletin-2015-09.txt``.

    Raises ``IssueError`` only when there is no issue line (2015 年第 9 期 …) before the
    first article; everything else is reported as a ``Problem``.
    """
    rep = _Problems()
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = [ln.strip() for ln in text.split("\n")]
    rows = [(i + 1, s) for i, s in enumerate(lines) if s]  # (1-based line, text)

    first_article = next((k for k, (_, s) in enumerate(rows) if s.startswith(_STARS)), len(rows))
    contents_at = next(
        (k for k, (_, s) in enumerate(rows[:first_article]) if _CONTENTS_RE.match(s)), None
    )
    masthead = _plain_masthead(rows[: first_article if contents_at is None else contents_at], rep)

    contents: list[tuple[int, str]] = []
    if contents_at is None:
        rep.warning(0, "no contents list (【本期导读】) before the first article")
    else:
        contents = _plain_contents(rows[contents_at + 1 : first_article])
        if not contents:
            rep.warning(rows[contents_at][0], "the contents list (【本期导读】) is empty")

    body = rows[first_article:]
    end_at = _end_start(body)
    end = _end_block(body[end_at:], rep)
    if not end.lines:
        rep.warning(0, "no end block (报：… / 发：… lines after the last article)")

    articles: list[Article] = []
    starts = [k for k, (_, s) in enumerate(body[:end_at]) if s.startswith(_STARS)]
    for n, k in enumerate(starts):
        line, head = body[k]
        title = head[1:].strip()
        if not title:
            rep.error(line, "article line (☆) has no title")
        stop = starts[n + 1] if n + 1 < len(starts) else end_at
        blocks = _plain_blocks(body[k + 1 : stop], rep)
        if not blocks:
            rep.warning(line, f"article {_q(title)} has no text")
        articles.append(Article(title, blocks, line=line))
    if not articles:
        rep.error(0, "no articles: each article starts with a line beginning ☆")

    if contents_at is not None:
        _check_contents(contents, articles, rep)
    issue = Issue(masthead, tuple(e for _, e in contents), tuple(articles), end)
    return ParseResult(issue, rep.sorted())


def _plain_masthead(rows: list[tuple[int, str]], rep: _Problems) -> Masthead:
    at = next((k for k, (_, s) in enumerate(rows) if _ISSUE_RE.match(s)), None)
    if at is None:
        raise IssueError(
            "no issue line such as '2015 年第 9 期 总第 33 期' above the contents and "
            "articles; is this a bulletin?"
        )
    issue_line, issue_text = rows[at]
    m = _ISSUE_RE.match(issue_text)
    assert m is not None
    above = [s for _, s in rows[:at]]
    title = above[-1] if above else ""
    organisation = above[-2] if len(above) >= 2 else ""
    notice = " ".join(above[:-2])
    if not title:
        rep.error(issue_line, "no title line (简 报) above the issue line")
    if not organisation:
        rep.error(issue_line, "no organisation line above the title")
    elif not notice:
        rep.warning(rows[0][0], "no notice line (内部刊物 注意保存) above the organisation")

    publisher = ""
    date: dt.date | None = None
    for line, s in rows[at + 1 :]:
        d = _DATE_RE.search(s)
        rest = (s[: d.start()] + s[d.end() :]).strip() if d else s
        if d and date is None:
            try:
                date = dt.date(int(d["y"]), int(d["m"]), int(d["d"]))
            except ValueError:
                rep.error(line, f"{_q(d.group(0))} is not a valid date")
        elif d:
            rep.warning(line, f"second date {_q(d.group(0))} in the masthead; ignored")
        if rest and not publisher:
            publisher = rest
        elif rest:
            rep.warning(line, f"{_q(rest)} is not part of the masthead; ignored")
    if not publisher:
        rep.error(issue_line, "no publisher line (…编印) under the issue line")
    if date is None and not any(_DATE_RE.search(s) for _, s in rows[at + 1 :]):
        rep.error(issue_line, "no date line such as '2015 年 11 月 24 日' in the masthead")
    total = m["total"]
    return Masthead(
        notice=notice,
        organisation=organisation,
        title=title,
        year=int(m["year"]),
        number=int(m["number"]),
        total_number=int(total) if total else None,
        publisher=publisher,
        date=date,
    )


def _plain_contents(rows: list[tuple[int, str]]) -> list[tuple[int, str]]:
    entries: list[tuple[int, str]] = []
    numbered = False
    for line, s in rows:
        mark = _ENTRY_MARK_RE.match(s)
        text = s[mark.end() :].strip() if mark else s
        if mark and mark.end():
            numbered = True
        elif numbered and entries:  # an entry wrapped onto the next line
            entries[-1] = (entries[-1][0], entries[-1][1] + text)
            continue
        if text:
            entries.append((line, text))
    return entries


@dataclass
class _Para:
    kind: BlockKind
    rows: list[tuple[int, str]]

    @property
    def text(self) -> str:
        return "".join(s for _, s in self.rows)


def _plain_blocks(rows: list[tuple[int, str]], rep: _Problems) -> tuple[Block, ...]:
    paras: list[_Para] = []
    for line, s in rows:
        heading = (
            BlockKind.SECTION
            if _SECTION_RE.match(s)
            else BlockKind.SUBSECTION
            if _SUBSECTION_RE.match(s)
            else None
        )
        if heading is not None:
            if _is_heading_text(s):
                paras.append(_Para(heading, [(line, s)]))
                continue
            rep.warning(line, f"{_q(s)} starts like a heading but runs on; kept as a paragraph")
        plain = heading is None and not _NUMBERED_RE.match(s)
        prev = paras[-1] if paras else None
        if plain and prev and prev.kind is BlockKind.PARAGRAPH and _is_cut(prev.text, s):
            prev.rows.append((line, s))  # a paragraph cut in two by a page break
            continue
        if plain and _heading_like(s):
            rep.warning(
                line,
                f"{_q(s)} is a short line without punctuation: kept as a paragraph "
                "(number it 一、 or （一） if it is a heading; join it to the next line if "
                "a page break cut a paragraph here)",
            )
        paras.append(_Para(BlockKind.PARAGRAPH, [(line, s)]))
    for p in paras:
        if (
            p.kind is BlockKind.PARAGRAPH
            and not _ends_sentence(p.text)
            and not _heading_like(p.text)
        ):
            rep.warning(p.rows[-1][0], f"paragraph {_q(p.text)} ends without punctuation")
    return tuple(Block(p.kind, _plain_spans(p.rows, rep), line=p.rows[0][0]) for p in paras)


def _plain_spans(rows: list[tuple[int, str]], rep: _Problems) -> tuple[Span, ...]:
    text = "".join(s for _, s in rows)
    offsets: list[tuple[int, int]] = []
    pos = 0
    for line, s in rows:
        offsets.append((pos, line))
        pos += len(s)

    def line_at(offset: int) -> int:
        return max((ln for start, ln in offsets if start <= offset), default=rows[0][0])

    chars: list[_Char] = []
    pos = 0
    for m in _LINK_RE.finditer(text):
        chars += [(c, False, None) for c in text[pos : m.start()]]
        href: str | None = _MD.normalizeLink(m["url"])
        if not is_safe_href(href or ""):
            rep.warning(
                line_at(m.start()),
                f"link to {_q(m['url'], 40)} dropped, only https: and mailto: links are "
                f"allowed; its text {_q(m['label'])} is kept",
            )
            href = None
        chars += [(c, False, href) for c in m["label"]]
        pos = m.end()
    chars += [(c, False, None) for c in text[pos:]]
    return _group(_pair_bold(chars))


def _pair_bold(chars: list[_Char]) -> list[_Char]:
    """Turn ``**…**`` pairs into bold: an opener is not followed by a space, a closer not
    preceded by one (the rule ``_emphasis`` gives markdown-it)."""
    s = "".join(c for c, _, _ in chars)
    marks: list[int] = []
    i = 0
    while i < len(s) - 1:
        if s[i] == s[i + 1] == "*":
            marks.append(i)
            i += 2
        else:
            i += 1
    bold = [b for _, b, _ in chars]
    drop: set[int] = set()
    k = 0
    while k < len(marks):
        o = marks[k]
        closer = None
        if o + 2 < len(s) and not s[o + 2].isspace():
            closer = next(
                (
                    j
                    for j in range(k + 1, len(marks))
                    if marks[j] > o + 2 and not s[marks[j] - 1].isspace()
                ),
                None,
            )
        if closer is None:
            k += 1
            continue
        c = marks[closer]
        drop.update((o, o + 1, c, c + 1))
        for j in range(o + 2, c):
            bold[j] = True
        k = closer + 1
    return [(ch, bold[j], h) for j, (ch, _, h) in enumerate(chars) if j not in drop]


# --- end block (报尾) -------------------------------------------------------------

_NAME_SEPS = set("、，,；;\u3000")
_OPEN_MARKS = set("（(“‘《「『【[")
_CLOSE_MARKS = set("）)”’》」』】]")
# A piece naming only administrative levels (各区 / 县（市）) is not a body of its own:
# it enumerates levels of the body named next, as in 各区、县（市）委组织部.
_LEVELS_RE = re.compile(r"^各?(?:[省市区县乡镇]|街道|[(（][省市区县][)）])+$")


def split_names(text: str) -> tuple[str, ...]:
    """The bodies an end-block line names, in order: ``省委组织部、市委组织部`` gives two.

    ``、 ， ；`` separate names except inside brackets or quotes, and a piece that only
    lists administrative levels stays with the name after it, so ``各区、县（市）委组织部``
    is one name.
    """
    pieces: list[tuple[str, str]] = []  # (piece, separator written after it)
    depth = 0
    buf: list[str] = []
    for ch in text:
        if ch in _OPEN_MARKS:
            depth += 1
        elif ch in _CLOSE_MARKS:
            depth = max(0, depth - 1)
        if depth == 0 and ch in _NAME_SEPS:
            pieces.append(("".join(buf).strip(), ch))
            buf = []
        else:
            buf.append(ch)
    pieces.append(("".join(buf).strip(), ""))
    names: list[str] = []
    carry = ""
    for piece, sep in pieces:
        if not piece:
            continue
        if _LEVELS_RE.match(piece) and sep not in ("", "\u3000"):
            carry += piece + sep
            continue
        names.append((carry + piece).rstrip("。."))
        carry = ""
    if carry:
        names.append(carry[:-1])
    return tuple(n for n in names if n)


def _end_start(rows: list[tuple[int, str]]) -> int:
    """Index of the first row of the end block: the first 报：/发： line after which
    only end-block lines follow; ``len(rows)`` if there is none."""
    for k, (_, s) in enumerate(rows):
        if _END_RE.match(s) and _all_end_lines(rows[k:]):
            return k
    return len(rows)


def _all_end_lines(rows: list[tuple[int, str]]) -> bool:
    for _, s in rows:
        if _END_RE.match(s) or _COPIES_RE.match(s) or _RULE_RE.match(s) or s.endswith("印发"):
            continue
        if s.startswith(_STARS) or s.endswith(("。", "！", "？")):
            return False  # article text, not a wrapped 报： line
    return True


def _end_block(rows: list[tuple[int, str]], rep: _Problems) -> EndBlock:
    found: list[tuple[str, str]] = []
    copies: int | None = None
    for line, s in rows:
        m = _END_RE.match(s)
        c = _COPIES_RE.search(s)
        if m:
            text = m["text"]
            if c:
                copies = int(c["n"])
                text = text[: len(text) - len(c.group(0))].rstrip()
            found.append((m["label"], text.strip()))
        elif c and c.start() == 0:
            copies = int(c["n"])
        elif _RULE_RE.match(s):
            continue
        elif s.endswith("印发"):
            rep.warning(line, f"{_q(s)} is not kept (the date is in the masthead)")
        elif found:  # a long 报： line wrapped onto the next line
            found[-1] = (found[-1][0], found[-1][1] + s)
        else:
            rep.warning(line, f"{_q(s)} in the end block is not kept")
    return EndBlock(tuple(EndLine(lb, t, split_names(t)) for lb, t in found), copies)


# --- contents -------------------------------------------------------------------

_QUOTES = str.maketrans({"“": '"', "”": '"', "＂": '"', "‘": "'", "’": "'"})


def _match_key(text: str) -> str:
    """Compare titles the way a reader does: ，/, ：/: and spaces alike, no final 。."""
    key = unicodedata.normalize("NFKC", text).translate(_QUOTES)
    return re.sub(r"\s+", "", key).rstrip("。.!?;")


def _check_contents(
    contents: list[tuple[int, str]], articles: list[Article], rep: _Problems
) -> None:
    unmatched = list(articles)
    for n, (line, entry) in enumerate(contents, start=1):
        key = _match_key(entry)
        hit = next((a for a in unmatched if _match_key(a.title) == key), None)
        if hit is not None:
            unmatched.remove(hit)
            continue
        close = difflib.get_close_matches(key, [_match_key(a.title) for a in articles], 1, 0.6)
        hint = ""
        if close:
            title = next(a.title for a in articles if _match_key(a.title) == close[0])
            hint = f" (closest article: {_q(title)})"
        rep.error(line, f"contents entry {n} {_q(entry)} matches no article{hint}")
    for a in unmatched:
        rep.warning(a.line, f"article {_q(a.title)} is not in the contents (本期导读)")


# --- Markdown -------------------------------------------------------------------

_FRONT_STR = ("notice", "organisation", "title", "publisher")
_FRONT_KEYS = (*_FRONT_STR, "year", "number", "total_number", "date", "send_at")
_FRONT_OVERRIDES = {"report_to": "报", "send_to": "发"}
_CONTENTS_TITLES = {"本期导读", "本期要目", "本期目录", "目录"}


def _is_contents_title(text: str) -> bool:
    return re.sub(r"[\s【】\[\]]", "", text) in _CONTENTS_TITLES


def parse_markdown(text: str) -> ParseResult:
    """Parse Markdown with TOML front matter between ``+++`` lines (see ``to_markdown``).

    Raises ``IssueError`` if there is no front matter or it is not valid TOML.
    """
    rep = _Problems()
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not lines or lines[0].strip() != "+++":
        raise IssueError("no front matter: a Markdown issue starts with a '+++' line")
    close = next((i for i in range(1, len(lines)) if lines[i].strip() == "+++"), None)
    if close is None:
        raise IssueError("the front matter opened on line 1 has no closing '+++' line")
    front = "\n".join(lines[1:close])
    try:
        data = tomllib.loads(front)
    except tomllib.TOMLDecodeError as e:
        msg = re.sub(r"line (\d+)", lambda m: f"line {int(m[1]) + 1}", str(e))
        raise IssueError(f"the front matter is not valid TOML: {msg}") from e

    key_lines: dict[str, int] = {}
    for i, ln in enumerate(lines[1:close], start=2):
        km = re.match(r'\s*"?([A-Za-z0-9_-]+)"?\s*=', ln)
        if km:
            key_lines.setdefault(km[1], i)
    masthead, send_at, overrides = _front_matter(data, key_lines, rep)

    offset = close + 1  # body line 0 is file line offset + 1
    walker = _MarkdownBody(rep, offset)
    walker.walk(_MD.parse("\n".join(lines[close + 1 :])))
    end = walker.end
    for key, label in _FRONT_OVERRIDES.items():
        if key in overrides:
            new = EndLine(label, overrides[key], split_names(overrides[key]))
            old = [ln for ln in end.lines if ln.label != label]
            pos = next((i for i, ln in enumerate(end.lines) if ln.label == label), None)
            if pos is None:
                pos = 0 if label == "报" else len(old)
            end = EndBlock((*old[:pos], new, *old[pos:]), end.copies)

    if not walker.articles:
        rep.error(0, "no articles: each article starts with a '## ' heading")
    if walker.contents_line:
        _check_contents(walker.contents, walker.articles, rep)
    elif walker.articles:
        rep.warning(0, "no contents list (a '## 本期导读' heading followed by a list)")
    issue = Issue(
        masthead,
        tuple(e for _, e in walker.contents),
        tuple(walker.articles),
        end,
        send_at=send_at,
    )
    return ParseResult(issue, rep.sorted())


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, dt.datetime):
        return "a date-time"
    if isinstance(value, dt.date):
        return "a date"
    return {str: "a string", int: "an integer", float: "a number", list: "a list"}.get(
        type(value), "a table"
    )


def _front_matter(
    data: dict[str, Any], key_lines: dict[str, int], rep: _Problems
) -> tuple[Masthead, dt.datetime | None, dict[str, str]]:
    def wrong(key: str, expected: str) -> None:
        rep.error(
            key_lines.get(key, 0),
            f"front matter key '{key}' must be {expected}, not {_kind(data[key])}",
        )

    def missing(key: str, example: str) -> None:
        rep.error(0, f"front matter has no '{key}' (add a line such as {key} = {example})")

    strings: dict[str, str] = {}
    for key in (*_FRONT_STR, *_FRONT_OVERRIDES):
        value = data.get(key)
        if isinstance(value, str):
            strings[key] = value
        elif value is not None:
            wrong(key, 'a string in quotes, e.g. "…"')
        elif key in _FRONT_STR:
            missing(key, '"…"')

    ints: dict[str, int | None] = {}
    for key, example in (("year", "2015"), ("number", "9"), ("total_number", "33")):
        value = data.get(key)
        ints[key] = None
        if isinstance(value, int) and not isinstance(value, bool):
            ints[key] = value
        elif value is not None:
            wrong(key, f"a whole number such as {example}")
        elif key != "total_number":
            missing(key, example)

    date = data.get("date")
    if date is None:
        missing("date", "2015-11-24")
    elif isinstance(date, dt.datetime) or not isinstance(date, dt.date):
        wrong("date", "a date such as 2015-11-24 (no quotes, no time)")
        date = None
    send_at = data.get("send_at")
    if send_at is not None and not isinstance(send_at, dt.datetime):
        wrong("send_at", "a date and time such as 2015-11-25T09:00:00+08:00 (no quotes)")
        send_at = None

    known = (*_FRONT_KEYS, *_FRONT_OVERRIDES)
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, 1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            rep.warning(key_lines.get(key, 0), f"unknown front matter key '{key}'{hint}")

    masthead = Masthead(
        notice=strings.get("notice", ""),
        organisation=strings.get("organisation", ""),
        title=strings.get("title", ""),
        year=ints["year"] or 0,
        number=ints["number"] or 0,
        total_number=ints["total_number"],
        publisher=strings.get("publisher", ""),
        date=date,
    )
    overrides = {k: v for k, v in strings.items() if k in _FRONT_OVERRIDES}
    return masthead, send_at, overrides


class _MarkdownBody:
    """Walks markdown-it's block tokens and collects contents, articles and end block."""

    def __init__(self, rep: _Problems, offset: int) -> None:
        self.rep = rep
        self.offset = offset
        self.contents: list[tuple[int, str]] = []
        self.contents_line = 0
        self.articles: list[Article] = []
        self.end = EndBlock()
        self._title: tuple[int, str] | None = None
        self._blocks: list[Block] = []
        self._in_contents = False
        self._item_prefix: list[str] = []
        self._warned: set[str] = set()

    def line(self, token: Token) -> int:
        return token.map[0] + self.offset + 1 if token.map else 0

    def walk(self, tokens: list[Token]) -> None:
        end_at = self._end_start(tokens)
        lists: list[str] = []
        for i, tok in enumerate(tokens[:end_at]):
            t = tok.type
            if t == "heading_open":
                self._heading(tok, tokens[i + 1])
            elif t == "paragraph_open":
                self._paragraph(tok, tokens[i + 1], lists)
            elif t in ("bullet_list_open", "ordered_list_open"):
                lists.append(t)
                if t == "bullet_list_open" and not self._in_contents:
                    self._once(tok, "bullet list items are kept as plain paragraphs")
            elif t in ("bullet_list_close", "ordered_list_close"):
                lists.pop()
            elif t == "list_item_open":
                ordered = lists[-1] == "ordered_list_open"
                self._item_prefix.append(f"{tok.info}{tok.markup} " if ordered else "")
            elif t == "list_item_close":
                self._item_prefix.pop()
            elif t in ("fence", "code_block"):
                self._once(tok, "code blocks are kept as plain paragraphs")
                chars: list[_Char] = [(c, False, None) for c in tok.content.strip()]
                self._add(BlockKind.PARAGRAPH, chars, tok)
            elif t == "blockquote_open":
                self._once(tok, "quote markers (>) are ignored")
            elif t == "hr":
                self._once(tok, "a '---' line is only used before the end block; ignored")
        self._finish_article()
        if end_at < len(tokens):
            self.end = self._end_block(tokens[end_at + 1 :])

    def _once(self, tok: Token, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.rep.warning(self.line(tok), message)

    def _heading(self, tok: Token, inline: Token) -> None:
        text = "".join(c for c, _, _ in _join_breaks(self._chars(inline, self.line(tok)))).strip()
        level = int(tok.tag[1])
        self._in_contents = False
        first = not (self.articles or self._title or self.contents_line)
        if level == 2 and first and _is_contents_title(text):
            self._finish_article()
            self._in_contents = True
            self.contents_line = self.line(tok)
        elif level == 2:
            self._finish_article()
            self._title = (self.line(tok), text)
        elif level == 1:
            self.rep.warning(
                self.line(tok), "'# ' headings are ignored (the masthead is in the front matter)"
            )
        else:
            if level > 4:
                self._once(tok, "'##### ' headings and deeper are kept as subsections")
            kind = BlockKind.SECTION if level == 3 else BlockKind.SUBSECTION
            self._add(kind, self._chars(inline, self.line(tok)), tok)

    def _paragraph(self, tok: Token, inline: Token, lists: list[str]) -> None:
        line = self.line(tok)
        chars = self._chars(inline, line)
        if self._in_contents:
            text = "".join(c for c, _, _ in chars)
            for k, entry in enumerate(text.split("\n")):
                ordered = bool(lists) and lists[-1] == "ordered_list_open" and k == 0
                mark = None if ordered else _ENTRY_MARK_RE.match(entry)
                entry = entry[mark.end() :] if mark else entry
                if entry.strip():
                    self.contents.append((line + k, entry.strip()))
            return
        prefix = self._item_prefix[-1] if self._item_prefix else ""
        if prefix:
            self._item_prefix[-1] = ""  # only the item's first paragraph carries its number
        chars = [(c, False, None) for c in prefix] + chars
        text = "".join(c for c, _, _ in chars)
        if _END_RE.match(text) or _COPIES_RE.fullmatch(text):
            self.rep.warning(
                line,
                f"{_q(text)} looks like an end-block line but is not after the final '---' "
                "line; kept as article text",
            )
        self._add(BlockKind.PARAGRAPH, chars, tok)

    def _add(self, kind: BlockKind, chars: list[_Char], tok: Token) -> None:
        chars = _join_breaks(chars)
        # Full-width spaces pasted from Word are indentation here too, as in plain text.
        while chars and chars[0][0].isspace():
            del chars[0]
        while chars and chars[-1][0].isspace():
            del chars[-1]
        if not chars:
            return
        if self._title is None:
            self.rep.error(
                self.line(tok),
                "text before the first article; start an article with a '## title' line",
            )
            return
        self._blocks.append(Block(kind, _group(chars), line=self.line(tok)))

    def _finish_article(self) -> None:
        if self._title is not None:
            line, title = self._title
            if not self._blocks:
                self.rep.warning(line, f"article {_q(title)} has no text")
            self.articles.append(Article(title, tuple(self._blocks), line=line))
        self._title, self._blocks = None, []

    def _chars(self, inline: Token, line: int) -> list[_Char]:
        """Characters of an inline token; unsafe links lose their href (with a warning)."""
        out: list[_Char] = []
        bold = 0
        hrefs: list[str | None] = []
        for child in inline.children or []:
            t = child.type
            href = hrefs[-1] if hrefs else None
            if t in ("text", "text_special", "code_inline", "html_inline"):
                out += [(c, bold > 0, href) for c in child.content]
            elif t in ("softbreak", "hardbreak"):
                out.append(("\n", bold > 0, href))
                line += 1
            elif t == "strong_open":
                bold += 1
            elif t == "strong_close":
                bold -= 1
            elif t in ("em_open", "em_close"):
                self._once(inline, "italic (*…*) is not used in a bulletin; kept as plain text")
            elif t == "link_open":
                url = str(child.attrGet("href") or "")
                if not is_safe_href(url):
                    self.rep.warning(
                        line,
                        f"link to {_q(url, 40)} dropped, only https: and mailto: links are "
                        "allowed; its text is kept",
                    )
                hrefs.append(url if is_safe_href(url) else None)
            elif t == "link_close":
                hrefs.pop()
            elif t == "image":
                self.rep.warning(line, "images are not supported; only the alt text is kept")
                out += [(c, bold > 0, href) for c in child.content]
        return out

    def _end_start(self, tokens: list[Token]) -> int:
        """Index of the final top-level ``hr`` if only end-block paragraphs follow it."""
        last = max((i for i, t in enumerate(tokens) if t.type == "hr" and t.level == 0), default=-1)
        if last < 0:
            return len(tokens)
        for tok in tokens[last + 1 :]:
            if tok.type == "inline":
                first = tok.content.split("\n")[0]
                if not (_END_RE.match(first) or _COPIES_RE.fullmatch(first)):
                    return len(tokens)
            elif tok.type not in ("paragraph_open", "paragraph_close"):
                return len(tokens)
        return last

    def _end_block(self, tokens: list[Token]) -> EndBlock:
        rows: list[tuple[int, str]] = []
        for tok in tokens:
            if tok.type == "inline":
                line = self.line(tok)
                text = "".join(c for c, _, _ in self._chars(tok, line))
                rows += [(line + k, s.strip()) for k, s in enumerate(text.split("\n")) if s.strip()]
        return _end_block(rows, self.rep)


# --- writing Markdown -----------------------------------------------------------

_MD_ESCAPE = set("\\`*_[]<&!")


def _md_inline(text: str, *, heading: bool = False) -> str:
    out = "".join("\\" + c if c in _MD_ESCAPE or (heading and c == "#") else c for c in text)
    return out


def _md_block_start(text: str, *, numbered: bool = True) -> str:
    """Escape what would make a line start a heading, quote, list or rule.

    A numbered paragraph ``1. 创新……`` is written as it is: Markdown reads it as a list
    item, and ``parse_markdown`` puts the number back into the paragraph text.
    """
    if text[:1] in ("#", ">", "-", "+", "=", "~"):
        return "\\" + text
    if numbered and (m := re.match(r"\d{1,9}[.)] (?=\S)", text)):
        return m.group(0) + _md_block_start(text[m.end() :], numbered=False)
    m = re.match(r"\d{1,9}(?=[.)](?:[ \t]|$))", text)
    return text[: m.end()] + "\\" + text[m.end() :] if m else text


def _md_spans(spans: Sequence[Span], *, heading: bool = False) -> str:
    """Inline Markdown for spans; a bold run around links is one ``**…**``."""
    parts: list[str] = []
    for bold, run in itertools.groupby(spans, key=lambda sp: sp.bold):
        inner = ""
        for span in run:
            s = _md_inline(span.text, heading=heading)
            if span.href is not None:
                url = "".join("\\" + c if c in "\\()&<>" else c for c in span.href)
                s = f"[{s}]({url})"
            inner += s
        parts.append(f"**{inner}**" if bold else inner)
    return "".join(parts)


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def to_markdown(issue: Issue) -> str:
    """The Markdown form of an issue, for staff to edit: ``parse_markdown`` reads it
    back to an equal ``Issue``."""
    m = issue.masthead
    out = [
        "+++",
        f"notice = {_toml_str(m.notice)}",
        f"organisation = {_toml_str(m.organisation)}",
        f"title = {_toml_str(m.title)}",
        f"year = {m.year}",
        f"number = {m.number}",
    ]
    if m.total_number is not None:
        out.append(f"total_number = {m.total_number}")
    out.append(f"publisher = {_toml_str(m.publisher)}")
    if m.date is not None:
        out.append(f"date = {m.date.isoformat()}")
    if issue.send_at is not None:
        out.append(f"send_at = {issue.send_at.isoformat()}")
    else:
        out.append("# send_at = 2015-11-25T09:00:00+08:00  # when to send (optional)")
    out += ["+++", ""]
    # Only the first '## ' heading can open the contents, so an article that happens
    # to be called 本期导读 needs a contents heading (maybe empty) in front of it.
    first_title = issue.articles[0].title if issue.articles else ""
    if issue.contents or _is_contents_title(first_title):
        out += ["## 本期导读", ""]
        out += [
            f"{n}. {_md_block_start(_md_inline(e), numbered=False)}"
            for n, e in enumerate(issue.contents, 1)
        ]
        out.append("")
    prefixes = {BlockKind.SECTION: "### ", BlockKind.SUBSECTION: "#### "}
    for article in issue.articles:
        out += [f"## {_md_inline(article.title, heading=True)}", ""]
        for block in article.blocks:
            prefix = prefixes.get(block.kind)
            if prefix:
                out.append(prefix + _md_spans(block.spans, heading=True))
            else:
                out.append(_md_block_start(_md_spans(block.spans)))
            out.append("")
    if issue.end.lines or issue.end.copies is not None:
        out += ["---", ""]
        out += [f"{ln.label}：{_md_inline(ln.text)}\n" for ln in issue.end.lines]
        if issue.end.copies is not None:
            out += [f"共印 {issue.end.copies} 份", ""]
    return "\n".join(out).rstrip("\n") + "\n"


# --- files ----------------------------------------------------------------------

_PARSERS: dict[str, Callable[[str], ParseResult]] = {
    ".txt": parse_text,
    ".md": parse_markdown,
    ".markdown": parse_markdown,
}


def _decode(data: bytes, name: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise IssueError(f"{name}: broken UTF-16 text at byte {e.start}") from e
    if b"\x00" in data:
        raise IssueError(f"{name}: this is a binary file, not text; save the issue as .txt or .md")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as first:
        try:
            return data.decode("gb18030")
        except UnicodeDecodeError:
            raise IssueError(
                f"{name}: neither UTF-8 nor GB18030 text (bad byte at offset {first.start}); "
                "save the file as UTF-8"
            ) from first


def parse_file(path: Path) -> ParseResult:
    """Parse ``path`` by its suffix (.txt plain text, .md Markdown).

    The bytes are UTF-8 (a BOM is fine), else GB18030 as Chinese Windows saves them.
    Raises ``IssueError`` naming the file if it cannot be read, decoded or parsed.
    """
    parser = _PARSERS.get(path.suffix.lower())
    if parser is None:
        raise IssueError(
            f"{path}: unknown kind of issue file {path.suffix or '(no suffix)'!r}; use .txt "
            "(plain bulletin text) or .md (Markdown with TOML front matter)"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IssueError(f"{path}: cannot read the file ({e.strerror or e})") from e
    text = _decode(data, str(path))
    try:
        return parser(text)
    except IssueError as e:
        raise IssueError(f"{path}: {e}") from e
