"""Plain bulletin text, as staff take it out of the printed PDF."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from mailer.errors import IssueError
from mailer.models import Article, Block, BlockKind, Issue, Masthead, Span
from mailer.numerals import CN_DIGIT, DATE_RE, LOOSE_DATE_RE, NUMBER_PATTERN, date_of, number_value

from .common import (
    _ENTRY_MARK_RE,
    _MD,
    _STARS,
    ParseResult,
    _bold_runs,
    _Char,
    _check_contents,
    _checked_href,
    _end_block,
    _end_start,
    _group,
    _Problems,
    _q,
    check_header_text,
    check_lone_cr,
)

# --- plain text -----------------------------------------------------------------

# 2015 年第 9 期 总第 33 期, 二〇一五年第九期（总第三十三期）
_ISSUE_RE = re.compile(
    rf"^(?P<year>\d{{4}}|[{CN_DIGIT}]{{4}})\s*年\s*第\s*(?P<number>{NUMBER_PATTERN})\s*期\s*"
    rf"(?:[(（]?\s*总\s*第\s*(?P<total>{NUMBER_PATTERN})\s*期\s*[)）]?)?$"
)
# What staff meant as the issue line, for a message at its own line when it cannot be read.
_LOOSE_ISSUE_RE = re.compile(r"第\s*\S{1,8}\s*期")
_ISSUE_HINT = "write it as 2015 年第 9 期 总第 33 期 (or 二〇一五年第九期 总第三十三期)"
_DATE_HINT = "write it as 2015 年 11 月 24 日 (or 二〇一五年十一月二十四日)"
_CONTENTS_RE = re.compile(r"^[【\[]?\s*(?:本期导读|本期要目|本期目录|目\s*录)\s*[】\]]?\s*[:：]?$")
_SECTION_RE = re.compile(r"^[一二三四五六七八九十]{1,3}、")
_SUBSECTION_RE = re.compile(r"^[(（][一二三四五六七八九十]{1,3}[)）]")
_NUMBERED_RE = re.compile(r"^(?:\d{1,3}\s*[.．、](?!\d)|[(（]\d{1,3}[)）]|\d{1,3}[)）])")
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
    source = text.lstrip("\ufeff")
    text = source.replace("\r\n", "\n").replace("\r", "\n")
    lines = [ln.strip() for ln in text.split("\n")]
    rows = [(i + 1, s) for i, s in enumerate(lines) if s]  # (1-based line, text)

    first_article = next((k for k, (_, s) in enumerate(rows) if s.startswith(_STARS)), len(rows))
    check_lone_cr(rep, source, rows[first_article][0] - 1 if first_article < len(rows)
                  else len(lines))
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


def _issue_line(rows: list[tuple[int, str]]) -> int:
    """Index of the issue line (2015 年第 9 期 …); raises ``IssueError`` at the line of
    one that cannot be read, or when there is none."""
    at = next((k for k, (_, s) in enumerate(rows) if _ISSUE_RE.match(s)), None)
    if at is not None:
        return at
    for line, s in rows:
        if _LOOSE_ISSUE_RE.search(s) and "年" in s:
            raise IssueError(f"line {line}: {_q(s, 40)} is not an issue line that can be "
                             f"read; {_ISSUE_HINT}")
    raise IssueError(
        "no issue line such as '2015 年第 9 期 总第 33 期' above the contents and "
        "articles; is this a bulletin?"
    )


def _plain_masthead(rows: list[tuple[int, str]], rep: _Problems) -> Masthead:
    at = _issue_line(rows)
    issue_line, issue_text = rows[at]
    m = _ISSUE_RE.match(issue_text)
    assert m is not None
    year, number = number_value(m["year"]), number_value(m["number"])
    total = number_value(m["total"]) if m["total"] else None
    for part, value in (("year", year), ("number", number), ("total number", total)):
        key = {"year": "year", "number": "number", "total number": "total"}[part]
        if m[key] and value is None:
            rep.error(issue_line, f"the issue {part} {_q(m[key])} is not a number that can "
                                  f"be read; {_ISSUE_HINT}")
    above = [s for _, s in rows[:at]]
    title = above[-1] if above else ""
    organisation = above[-2] if len(above) >= 2 else ""
    check_header_text(rep, issue_line, "issue line", issue_text)
    if title:
        check_header_text(rep, rows[at - 1][0], "title", title)
    if organisation:
        check_header_text(rep, rows[at - 2][0], "organisation", organisation)
    notice = " ".join(above[:-2])
    if not title:
        rep.error(issue_line, "no title line (简 报) above the issue line")
    if not organisation:
        rep.error(issue_line, "no organisation line above the title")
    elif not notice:
        rep.warning(rows[0][0], "no notice line (内部刊物 注意保存) above the organisation")

    publisher = ""
    date: dt.date | None = None
    dated = False  # a line was meant as the date (read or not)
    for line, s in rows[at + 1 :]:
        d = DATE_RE.search(s) or LOOSE_DATE_RE.search(s)
        rest = (s[: d.start()] + s[d.end() :]).strip() if d else s
        if d and not dated:
            dated = True
            if d.re is not DATE_RE:
                rep.error(line, f"{_q(d.group(0))} is not a date that can be read; {_DATE_HINT}")
            else:
                try:
                    date = date_of(d)
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
    if not dated:
        rep.error(issue_line, f"no date line in the masthead under the issue line; {_DATE_HINT}")
    return Masthead(
        notice=notice,
        organisation=organisation,
        title=title,
        year=year or 0,
        number=number or 0,
        total_number=total,
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
        href = _checked_href(_MD.normalizeLink(m["url"]), m["label"], line_at(m.start()), rep)
        chars += [(c, False, href) for c in m["label"]]
        pos = m.end()
    chars += [(c, False, None) for c in text[pos:]]
    return _group(_bold_runs(chars))
