"""Text taken out of a Word or PDF issue, parsed by the plain-text parser.

A Word or PDF reader turns the file into the lines of plain bulletin text that
``text.parse_text`` already reads (one paragraph a line, ☆ before an article title,
``**…**`` around bold runs), each with the place staff find it (``paragraph 12``,
``page 3``), plus the pictures, which text cannot carry. One parser for every source
means one ``Issue`` and one set of checks; only the places in the problems change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mailer.models import Article, Block, BlockKind, Image, Issue

from .common import _END_RE, ParseResult, Problem
from .text import parse_text

# A date line in the masthead, in Arabic or Chinese numerals: lets a reader split the
# publisher and the date that Word puts on one line (a tab, a table row).
DATE_LIKE_RE = re.compile(r"[\d〇○零一二三四五六七八九]{4}\s*年\s*\S{1,3}\s*月\s*\S{1,3}\s*日")
# An end-block label alone in a table cell, whose text is in the next cell.
END_LABEL_RE = re.compile(r"^(?:抄送|抄报|报送|主送|报|送|发)\s*[:：]?$")


@dataclass(frozen=True)
class Line:
    """One line of the plain text: ``text`` has no line break."""

    text: str
    where: str  # "paragraph 12", "page 3", "table 1, row 2"


@dataclass(frozen=True)
class Picture:
    """A picture that comes after ``after`` lines of the text."""

    after: int
    image: Image
    where: str


@dataclass(frozen=True)
class Extracted:
    """What a reader took out of a file, and what it had to say about it."""

    lines: tuple[Line, ...]
    pictures: tuple[Picture, ...] = ()
    problems: tuple[Problem, ...] = ()  # with ``where`` set; line 0
    send_at: dt.datetime | None = None  # a Word file's document property ``send_at``


def as_text(extracted: Extracted) -> str:
    """The plain bulletin text of an extracted file (what ``parse_text`` reads)."""
    return "\n".join(ln.text for ln in extracted.lines) + "\n"


def parse_extracted(extracted: Extracted) -> ParseResult:
    """Parse extracted lines as plain text, put the pictures into their articles, and
    say every problem's place in the file rather than in the text made from it."""
    lines = extracted.lines
    result = parse_text(as_text(extracted))

    def place(p: Problem) -> Problem:
        if 0 < p.line <= len(lines):
            return dataclasses.replace(p, where=lines[p.line - 1].where)
        return p

    issue, placed = _place_pictures(result.issue, extracted.pictures, lines)
    if extracted.send_at is not None:
        issue = dataclasses.replace(issue, send_at=extracted.send_at)
    problems = [place(p) for p in result.problems] + list(extracted.problems) + placed
    # In file order: a problem's text line, or for a picture the line it follows.
    problems.sort(key=lambda p: p.line)
    return ParseResult(issue, tuple(problems))


def _place_pictures(
    issue: Issue, pictures: Sequence[Picture], lines: Sequence[Line]
) -> tuple[Issue, list[Problem]]:
    """Each picture goes into the article it stands in, before the first block that
    starts after it. One above the first article (a masthead logo) or in the end block
    is reported and left out: the email has its own masthead."""
    problems: list[Problem] = []
    if not pictures:
        return issue, problems
    end_at = len(lines)  # where the trailing run of end-block lines starts
    while end_at > 0 and (_END_RE.match(lines[end_at - 1].text)
                          or _is_end_tail(lines[end_at - 1].text)):
        end_at -= 1
    has_end = any(_END_RE.match(ln.text) for ln in lines[end_at:])
    blocks: dict[int, list[Block]] = {k: list(a.blocks) for k, a in enumerate(issue.articles)}
    for pic in pictures:
        owner = max(
            (k for k, a in enumerate(issue.articles) if 0 < a.line <= pic.after), default=None
        )
        if owner is None or (has_end and pic.after > end_at):
            problems.append(Problem(
                pic.after, f"picture {pic.image.name} is outside the articles (masthead or "
                "end block) and is not sent; move it into an article to send it", "warning",
                where=pic.where,
            ))
            continue
        block = Block(BlockKind.IMAGE, (), line=pic.after, image=pic.image)
        row = blocks[owner]
        at = next((i for i, b in enumerate(row) if b.line > pic.after), len(row))
        row.insert(at, block)
    articles = tuple(
        Article(a.title, tuple(blocks[k]), line=a.line) for k, a in enumerate(issue.articles)
    )
    return dataclasses.replace(issue, articles=articles), problems


def _is_end_tail(text: str) -> bool:
    """A line after the 报/发 lines: a rule, the 印发 line, 共印 N 份."""
    return not text.strip("-—─━_=*·. ") or text.endswith("印发") or "共印" in text
