"""Half-width punctuation in Chinese text (GB/T 15834): found, counted, and fixed only
when staff ask (``mailer issue convert --fix-punctuation``).

Text copied out of a PDF or typed with the input method in English mode carries
``, : ; ? !`` and straight quotes between Chinese characters, where GB/T 15834 writes
``， ： ； ？ ！`` and ``“ ” ‘ ’``. A mark counts only with a Chinese character before
it and a Chinese character (or the end of the line) after it, so ``9:00``,
``https://…`` and English text are left alone; a straight quote counts with a Chinese
character on one side and no letter or digit on the other.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections import Counter
from dataclasses import dataclass

from mailer.models import Article, Block, EndBlock, EndKind, EndLine, Issue, Span

from .common import split_names

FULL_WIDTH = {",": "，", ":": "：", ";": "；", "?": "？", "!": "！"}
_QUOTES = {'"': ("“", "”"), "'": ("‘", "’")}
_CJK_AMBIGUOUS = frozenset("“”‘’…—·")


@dataclass(frozen=True)
class Finding:
    """Half-width marks on one line of the source: mark -> how many."""

    line: int
    counts: Counter[str]
    where: str = ""  # in a Word or PDF file: "paragraph 12", "page 3"

    def __str__(self) -> str:
        marks = ", ".join(_quoted(m) + (f" ×{n}" if n > 1 else "")
                          for m, n in self.counts.items())
        fixed = "".join(dict.fromkeys(_full(m) for m in self.counts))
        where = self.where or f"line {self.line}"
        return (f"{where}: half-width punctuation between Chinese characters: "
                f"{marks} (GB/T 15834 writes {fixed})")


def _quoted(mark: str) -> str:
    return f'"{mark}"' if mark == "'" else f"'{mark}'"


def _full(mark: str) -> str:
    return FULL_WIDTH.get(mark) or "".join(_QUOTES[mark])


def _chinese(ch: str) -> bool:
    """An ideograph or a full-width mark (。（）, and “”‘’…— which Unicode counts as
    ambiguous width), not a space."""
    if ch in _CJK_AMBIGUOUS:
        return True
    return not ch.isspace() and unicodedata.east_asian_width(ch) in ("W", "F")


def fix_text(text: str) -> tuple[str, Counter[str]]:
    """``text`` with its half-width marks between Chinese characters made full-width,
    and how many of each were changed. Every change is one character for one, so
    positions stay where they were."""
    counts: Counter[str] = Counter()
    # Quotes first, so that a mark before an opening quote (他说:"…") sees “.
    out = list(text)
    quotes = {q: 0 for q in _QUOTES}  # straight quotes seen so far: even opens, odd closes
    for i, ch in enumerate(text):
        if ch in _QUOTES:
            before = text[i - 1] if i else ""
            after = text[i + 1] if i + 1 < len(text) else ""
            opening = quotes[ch] % 2 == 0
            quotes[ch] += 1
            near, far = (after, before) if opening else (before, after)
            if near and _chinese(near) and not (far and far.isascii() and far.isalnum()):
                out[i] = _QUOTES[ch][0 if opening else 1]
                counts[ch] += 1
    quoted = "".join(out)
    for i, ch in enumerate(quoted):
        if ch in FULL_WIDTH:
            before = quoted[i - 1] if i else ""
            after = quoted[i + 1] if i + 1 < len(quoted) else ""
            if before and _chinese(before) and (not after or _chinese(after)):
                out[i] = FULL_WIDTH[ch]
                counts[ch] += 1
    return "".join(out), counts


def check_source(text: str, *, markdown: bool = False) -> list[Finding]:
    """The lines of an issue source that have half-width marks between Chinese
    characters; in Markdown, the TOML front matter (between ``+++`` lines) is skipped."""
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    skip = 0
    if markdown and lines and lines[0].strip() == "+++":
        skip = next((i + 1 for i in range(1, len(lines)) if lines[i].strip() == "+++"), 0)
    found = []
    for n, line in enumerate(lines[skip:], start=skip + 1):
        _, counts = fix_text(line)
        if counts:
            found.append(Finding(n, counts))
    return found


def fix_issue(issue: Issue) -> tuple[Issue, int]:
    """``issue`` with every text fixed by ``fix_text``, and how many marks changed."""
    total = 0

    def fix(text: str) -> str:
        nonlocal total
        fixed, counts = fix_text(text)
        total += sum(counts.values())
        return fixed

    def spans(old: tuple[Span, ...]) -> tuple[Span, ...]:
        # Fixed as one text, so a mark right after a bold run sees the run's last
        # character; then cut back into the same spans (one character for one).
        joined = fix("".join(s.text for s in old))
        out, pos = [], 0
        for s in old:
            out.append(dataclasses.replace(s, text=joined[pos : pos + len(s.text)]))
            pos += len(s.text)
        return tuple(out)

    def end_line(ln: EndLine) -> EndLine:
        text = fix(ln.text)
        names = split_names(text) if ln.kind is EndKind.NAMES else ln.names
        return dataclasses.replace(ln, text=text, names=names)

    m = issue.masthead
    masthead = dataclasses.replace(
        m, notice=fix(m.notice), organisation=fix(m.organisation), title=fix(m.title),
        publisher=fix(m.publisher),
    )
    articles = tuple(
        Article(fix(a.title), tuple(Block(b.kind, spans(b.spans), line=b.line) for b in a.blocks),
                line=a.line)
        for a in issue.articles
    )
    end = EndBlock(tuple(end_line(ln) for ln in issue.end.lines), issue.end.copies)
    fixed = dataclasses.replace(issue, masthead=masthead,
                                contents=tuple(fix(c) for c in issue.contents),
                                articles=articles, end=end)
    return fixed, total
