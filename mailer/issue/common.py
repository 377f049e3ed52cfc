"""What both parsers share: problems, links, inline runs, the end block, contents."""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from markdown_it import MarkdownIt
from markdown_it.rules_inline.state_inline import Delimiter, Scanned, StateInline
from markdown_it.token import Token

from mailer.links import is_safe_href
from mailer.models import (
    COPIES_LABEL,
    END_LABELS,
    ISSUED_LABEL,
    Article,
    EndBlock,
    EndKind,
    EndLine,
    Issue,
    Span,
)
from mailer.numerals import DATE_PATTERN, NUMBER_PATTERN, number_value

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a source file."""

    line: int  # 1-based line in the source, 0 if not tied to a line
    message: str
    severity: Severity
    # Where staff find it in a Word or PDF file ("paragraph 12", "page 3"), which
    # has no lines; empty for text and Markdown, whose ``line`` says it.
    where: str = field(default="", compare=False)

    @property
    def place(self) -> str:
        """``line 12``, ``paragraph 12``, ``page 3``; empty if not tied to a place."""
        return self.where or (f"line {self.line}" if self.line else "")

    def __str__(self) -> str:
        where = f"{self.place}: " if self.place else ""
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


def _checked_href(url: str, label: str, line: int, rep: _Problems) -> str | None:
    """``url`` if an issue may link to it, else ``None`` with a warning: one message
    for both source formats."""
    if is_safe_href(url):
        return url
    rep.warning(
        line,
        f"link to {_q(url, 40)} dropped, only https: and mailto: links are allowed; "
        f"its text {_q(label)} is kept",
    )
    return None


class _Markdown(MarkdownIt):
    """markdown-it that lets every link through to the token stream, so that unsafe
    ones are reported (and dropped) by us rather than silently left as text."""

    def validateLink(self, url: str) -> bool:
        return True


def _emphasis(state: StateInline, silent: bool) -> bool:
    """markdown-it's emphasis rule, with ``*`` delimiters that work in Chinese text.

    CommonMark will not open ``**`` between a letter and punctuation, so
    ``工作**“两新”**党建`` stays literal; 简报 text is full of such runs. A ``*`` run
    here opens unless followed by a space and closes unless preceded by one; the one
    rule the plain-text parser uses too (``_bold_runs``), so both formats agree. ``_`` is
    unchanged.
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


def _star_emphasis(state: StateInline, silent: bool) -> bool:
    return state.src[state.pos] == "*" and _emphasis(state, silent)


# Plain text has no Markdown but ``**…**`` for bold: only the emphasis rule (``*``
# runs only), with markdown-it pairing the runs exactly as it does for Markdown.
# fragments_join stays off, so that each token stands for its own stretch of source.
_BOLD_MD = MarkdownIt("zero").enable("emphasis")
_BOLD_MD.inline.ruler.at("emphasis", _star_emphasis)
_BOLD_MD.inline.ruler2.disable("fragments_join")

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


def _bold_runs(chars: Sequence[_Char]) -> list[_Char]:
    """Turn ``**…**`` in plain text into bold by the rule ``_emphasis`` gives Markdown
    (a ``*`` run opens unless a space follows, closes unless one precedes), so both
    formats make the same runs bold. A lone ``*…*`` (italic in Markdown) stays text."""
    tokens: list[Token] = []
    _BOLD_MD.inline.parse("".join(c for c, _, _ in chars), _BOLD_MD, {}, tokens)
    out: list[_Char] = []
    pos = bold = 0
    for tok in tokens:
        if tok.type == "text" and tok.content:  # source text, as written
            out += [(c, bold > 0, h) for c, _, h in chars[pos : pos + len(tok.content)]]
            pos += len(tok.content)
            continue
        if tok.type in ("em_open", "em_close"):  # the one "*" stays
            out.append((chars[pos][0], bold > 0, chars[pos][2]))
        bold += {"strong_open": 1, "strong_close": -1}.get(tok.type, 0)
        pos += 1  # a "*" of a strong pair is dropped
    return out


def _wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


# --- shared patterns ----------------------------------------------------------

_STARS = ("☆", "★")
_RULE_RE = re.compile(r"^[-—─━_=*·.\s]{3,}$")
_ENTRY_MARK_RE = re.compile(r"^(?:[-*•·●▪]\s*)?(?:(?:\d{1,3}\s*[、.．)）]|[(（]\d{1,3}[)）])\s*)?")
# 报：, 报送：, 抄　送：… (a label may be spaced out to the width of the others).
_END_RE = re.compile(
    r"^(?P<label>"
    + "|".join(r"\s*".join(lb) for lb in sorted(END_LABELS, key=len, reverse=True))
    + r")\s*[:：]\s*(?P<text>.*)$"
)
_COPIES_RE = re.compile(r"[(（]?\s*共印\s*(?P<n>" + NUMBER_PATTERN + r")\s*份\s*[)）]?$")
# 杭州市“两新”党务工作者协会秘书处　　2015 年 11 月 24 日印发
_ISSUED_RE = re.compile(r"^(?P<body>.*?)\s*(?P<date>" + DATE_PATTERN + r")?\s*印\s*发$")


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


def is_end_line(s: str) -> bool:
    """Whether a line can belong to the end block: a labelled line (报：…), the
    印发 line or the copies line."""
    return bool(_END_RE.match(s) or _COPIES_RE.match(s) or _ISSUED_RE.match(s))


def _end_start(rows: list[tuple[int, str]]) -> int:
    """Index of the first row of the end block: the first 报：/发： line after which
    only end-block lines follow; ``len(rows)`` if there is none."""
    for k, (_, s) in enumerate(rows):
        if _END_RE.match(s) and _all_end_lines(rows[k:]):
            return k
    return len(rows)


def _all_end_lines(rows: list[tuple[int, str]]) -> bool:
    for _, s in rows:
        if is_end_line(s) or _RULE_RE.match(s):
            continue
        if s.startswith(_STARS) or s.endswith(("。", "！", "？")):
            return False  # article text, not a wrapped 报： line
    return True


def _copies(line: int, text: str, rep: _Problems) -> tuple[str, EndLine | None, int | None]:
    """``text`` without a copies note at its end (发：协会会员　共印 50 份), that note as
    a line of its own (as written) and the number it gives."""
    c = _COPIES_RE.search(text)
    if c is None:
        return text, None, None
    n = number_value(c["n"])
    if n is None:
        rep.warning(line, f"{_q(c.group(0))}: the number of copies is not a number; kept as "
                          "written")
    note = EndLine(COPIES_LABEL, c.group(0).strip(), kind=EndKind.COPIES)
    return text[: c.start()].rstrip(), note, n


def _end_block(rows: list[tuple[int, str]], rep: _Problems) -> EndBlock:
    """The end block as written: every line in order, with its label, punctuation kept."""
    found: list[EndLine] = []
    count: int | None = None
    wrapped = False  # the last line found is a 报： line that may go on on the next row
    for line, s in rows:
        m = _END_RE.match(s)
        if m:
            text, copies, n = _copies(line, m["text"].strip(), rep)
            label = re.sub(r"\s+", "", m["label"])
            found.append(EndLine(label, text, split_names(text)))
        elif _RULE_RE.match(s):
            wrapped = False
            continue
        else:
            text, copies, n = _copies(line, s, rep)
            issued = _ISSUED_RE.match(text) if text else None
            if issued:
                found.append(EndLine(ISSUED_LABEL, issued["body"].strip(), kind=EndKind.ISSUED,
                                     date=(issued["date"] or "").strip()))
            elif text and wrapped and found:  # a long 报： line wrapped onto the next line
                last = found[-1]
                joined = last.text + text
                found[-1] = EndLine(last.label, joined, split_names(joined))
            elif text:
                rep.warning(line, f"{_q(s)} in the end block is not a 报：/发： line, a 印发 "
                                  "line or a copies line (共印 N 份); it is not kept")
        if copies is not None:
            found.append(copies)
            count = n if n is not None else count
        wrapped = bool(found) and found[-1].kind is EndKind.NAMES
    return EndBlock(tuple(found), count)


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


# --- text that becomes a header --------------------------------------------------
# The masthead's title, organisation and issue line go into the Subject (and may go
# into a From name through the subject template); a line break or control character
# there would end the header or change it. Reported as errors, so that no send,
# schedule or watched folder starts such an issue (``message`` refuses it too).

_LINE_END = re.compile(r"\r\n|\r|\n")


def check_header_text(rep: _Problems, line: int, what: str, value: str) -> None:
    """An error at ``line`` if ``value`` holds a character no header may carry."""
    from mailer.message import header_problem  # the one rule, shared with the builder

    problem = header_problem(value)
    if problem:
        rep.error(line, f"the {what} {_q(value)} {problem}; it goes into the e-mail's "
                        "Subject, where it cannot be: put it on one line without it")


def check_lone_cr(rep: _Problems, text: str, header_lines: int) -> None:
    """A carriage return that ends a line on its own in a file whose lines end with
    LF or CRLF: the text after it silently became a line of its own (a bare CR in the
    title line would replace the title). An error up to ``header_lines`` (where the
    masthead is), a warning after it. A file whose every line ends with CR is fine."""
    if "\r" not in text or "\n" not in text:
        return
    line = 1
    for m in _LINE_END.finditer(text):
        if m.group() == "\r":
            message = (f"a carriage return (CR) alone ends this line inside a file whose "
                       f"lines end with LF; the text after it became line {line + 1}")
            if line <= header_lines:
                rep.error(line, message + ": remove the stray CR")
            else:
                rep.warning(line, message)
        line += 1
