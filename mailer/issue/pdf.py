"""PDF issues (the printed edition), read with pdfplumber into the plain bulletin text.

A PDF has no paragraphs, only visual lines. They are rebuilt from the geometry:

- every visual line ends where the typesetter broke it, so a paragraph is rebuilt
  by joining lines: one starts at a first-line indent (or centred, or after a short
  line), and ends at a short line;
- across a page break a paragraph goes on when the new page starts at the left
  margin and the paragraph has not ended (a full last line, or no sentence end);
- running headers and footers (the same text on the same place of several pages) and
  page numbers (``- 3 -``, ``3``, ``第 3 页``) in the top or bottom margin are dropped;
- a title is marked ☆/★, or set larger than the body (after the masthead);
- characters in a bold font are ``**…**``, unless the whole line is bold.

A PDF without a text layer (a scan) holds no characters: that is said in one line.
"""

from __future__ import annotations

import io
import re
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pdfplumber
from pdfminer.layout import LTChar, LTContainer, LTImage
from pdfminer.pdfdocument import PDFEncryptionError, PDFPasswordIncorrect
from pdfminer.pdfexceptions import PDFException
from pdfminer.psexceptions import PSException
from pdfplumber.utils.clustering import cluster_objects
from pdfplumber.utils.exceptions import MalformedPDFException, PdfminerException

from mailer.errors import IssueError

from ..numerals import DATE_RE, LOOSE_DATE_RE
from .common import _STARS, Problem
from .extracted import Extracted, Line
from .text import _CONTENTS_RE, _ISSUE_RE, _ends_sentence

_PAGE_NUMBER_RE = re.compile(
    r"^(?:[-—–－]\s*\d{1,3}\s*[-—–－]|\d{1,3}|第\s*\d{1,3}\s*页(?:\s*[/，,]?\s*共\s*\d+\s*页)?"
    r"|\d{1,3}\s*/\s*\d{1,3})$"
)
_MARGIN = 0.1  # of the page height: where running headers and footers stand


@dataclass
class _VLine:
    """One visual line of a page."""

    page: int
    text: str  # with **…** around bold runs
    x0: float
    x1: float
    top: float
    bottom: float
    size: float  # the line's most common character size
    bold: bool  # the whole line is in a bold font


def read(data: bytes, name: str) -> Extracted:
    """The text of a PDF's bytes, paragraph by paragraph.

    Raises ``IssueError`` for a file that is not a PDF, is password-protected, or has
    no text layer (a scan).
    """
    try:
        with pdfplumber.open(io.BytesIO(data)) as pdf:
            read = [_chars(page) for page in pdf.pages]
            pages = [_page_lines(n, chars) for n, (chars, _) in enumerate(read, 1)]
            heights = [float(page.height) for page in pdf.pages]
            pictures = [n for n, (_, images) in enumerate(read, 1) if images]
    except (PdfminerException, MalformedPDFException, PDFException, PSException, ValueError,
            KeyError, TypeError) as e:
        cause = e.args[0] if isinstance(e, PdfminerException) and e.args else e
        if isinstance(cause, PDFEncryptionError | PDFPasswordIncorrect):
            raise IssueError(
                f"{name} is password-protected: print it again without a password, or "
                "send the Word file (.docx) instead"
            ) from None
        raise IssueError(f"{name} cannot be read as a PDF ({cause or type(cause).__name__}); "
                         "print it to PDF again, or send the Word file (.docx) instead"
                         ) from None
    if not any(pages):
        raise IssueError(
            f"{name} has no text, only images of pages (a scan): mailer needs the PDF that "
            "Word or WPS prints (File > Save As > PDF), or the Word file (.docx) itself"
        )
    lines = _drop_running(pages, heights)
    problems = tuple(
        Problem(0, "a picture on this page is not sent from a PDF; send the Word file "
                "(.docx) to carry pictures into the email", "warning", where=f"page {n}")
        for n in pictures
    )
    return Extracted(tuple(_paragraphs(lines)), problems=problems)


def _chars(page: Any) -> tuple[list[dict[str, Any]], bool]:
    """The page's upright characters with pdfplumber's field names and coordinates (top
    and bottom from the top of the page, as its ``page.chars``), and whether the page
    holds a picture. Read from pdfminer's layout: pdfplumber's own objects carry every
    attribute of every object, half the time of reading a printed issue."""
    height = float(page.height)
    mb_x0, mb_top = float(page.mediabox[0]), float(page.mediabox[1])
    chars: list[dict[str, Any]] = []
    images = False
    stack = list(reversed(page.layout._objs))  # in the page's own order
    while stack:
        obj = stack.pop()
        if isinstance(obj, LTContainer):
            stack.extend(reversed(obj._objs))
        elif isinstance(obj, LTImage):
            images = True
        elif isinstance(obj, LTChar) and obj.upright:
            text = obj.get_text()
            if not text:
                continue
            name = obj.fontname
            chars.append({
                "text": text, "x0": obj.x0 + mb_x0, "x1": obj.x1 + mb_x0,
                "top": height - obj.y1 + mb_top, "bottom": height - obj.y0 + mb_top,
                "size": obj.size,
                "fontname": name.decode("latin-1") if isinstance(name, bytes) else name,
            })
    return chars, images


def _page_lines(number: int, chars: list[dict[str, Any]]) -> list[_VLine]:
    out: list[_VLine] = []
    for group in cluster_objects(chars, lambda c: round((c["top"] + c["bottom"]) / 2, 1), 2):
        group.sort(key=lambda c: c["x0"])
        inked = [c for c in group if not c["text"].isspace()]
        if not inked:
            continue
        size = Counter(round(float(c["size"]), 1) for c in inked).most_common(1)[0][0]
        all_bold = all(_is_bold(c) for c in inked)
        text: list[str] = []
        bold = False
        prev: dict[str, Any] | None = None
        for c in group:
            space = c["text"].isspace()
            if prev is not None and c["x0"] - prev["x1"] > 1.5 * float(c["size"]):
                text.append(" ")  # a wide gap (a tab in the masthead) parts like a space
            if not space and not all_bold and _is_bold(c) != bold:
                bold = not bold
                if bold:
                    text.append("**")
                else:
                    _close(text)
            text.append(" " if space else c["text"])
            prev = c
        if bold:
            _close(text)
        out.append(_VLine(
            number, re.sub(r" {2,}", " ", "".join(text)).strip(), float(inked[0]["x0"]),
            float(inked[-1]["x1"]), float(min(c["top"] for c in inked)),
            float(max(c["bottom"] for c in inked)), size, all_bold,
        ))
    out.sort(key=lambda ln: ln.top)
    return out


def _close(text: list[str]) -> None:
    """End a bold run before the spaces that end it (``**`` does not close after one)."""
    spaces = 0
    while text and text[-1] == " ":
        text.pop()
        spaces += 1
    text.append("**")
    text += [" "] * spaces


def _is_bold(char: dict[str, Any]) -> bool:
    name = str(char.get("fontname", ""))
    return bool(re.search(r"bold|heavy|black|semibold|demi", name, re.I))


def _drop_running(pages: list[list[_VLine]], heights: list[float]) -> list[_VLine]:
    """Every line but running headers, footers and page numbers, in reading order."""
    def in_margin(ln: _VLine) -> bool:
        h = heights[ln.page - 1]
        return ln.bottom < h * _MARGIN or ln.top > h * (1 - _MARGIN)

    seen = Counter(ln.text for page in pages for ln in page if in_margin(ln))
    out: list[_VLine] = []
    for page in pages:
        for ln in page:
            running = seen[ln.text] > 1 or bool(_PAGE_NUMBER_RE.match(ln.text))
            if in_margin(ln) and running and len(pages) > 1:
                continue
            out.append(ln)
    return out


def _paragraphs(lines: list[_VLine]) -> list[Line]:
    if not lines:
        return []
    body = Counter[float]()
    for ln in lines:
        body[ln.size] += len(ln.text)
    body_size = body.most_common(1)[0][0]
    left = statistics.median_low(
        [round(ln.x0) for ln in lines if ln.size == body_size]
    )
    right = max(ln.x1 for ln in lines if ln.size == body_size)
    indent = body_size * 1.2  # a first-line indent is two characters; one is noise

    out: list[tuple[list[_VLine], int]] = []  # (visual lines, first page)
    masthead = True
    issue_seen = False
    prev: _VLine | None = None
    for ln in lines:
        starts = (
            prev is None
            or ln.x0 > left + indent  # indented or centred
            or prev.x1 < right - body_size * 1.5  # the line before was short
            or ln.size != prev.size
            or ln.text.startswith(_STARS)
            or (ln.page == prev.page and ln.top - prev.bottom > body_size * 1.2)
        )
        if (prev is not None and ln.page == prev.page and ln.size == prev.size > body_size + 0.5
                and ln.top - prev.bottom < ln.size):
            starts = False  # a title too long for one line
        if prev is not None and ln.page != prev.page:
            # A new page at the left margin goes on with a paragraph that has not
            # ended; the page break, not the text, made the line before it short.
            starts = ln.x0 > left + indent or _ends_sentence(out[-1][0][-1].text) or (
                ln.size != prev.size
            )
        if masthead:
            starts = True  # each masthead line is a line of its own
        if starts:
            out.append(([ln], ln.page))
        else:
            out[-1][0].append(ln)
        if _ISSUE_RE.match(ln.text):
            issue_seen = True
        elif _CONTENTS_RE.match(ln.text) or (issue_seen and _is_date(ln.text)):
            masthead = False
        prev = ln

    result: list[Line] = []
    titles_from = next(
        (k for k, (group, _) in enumerate(out) if _CONTENTS_RE.match(group[0].text)
         or _is_date(group[0].text)), len(out)
    )
    for k, (group, page) in enumerate(out):
        text = _join([g.text for g in group])
        first = group[0]
        if (k > titles_from and first.size > body_size + 0.5 and not text.startswith(_STARS)
                and not _CONTENTS_RE.match(text)):
            text = "☆" + text
        result.append(Line(text, f"page {page}"))
    return result


def _join(texts: list[str]) -> str:
    """Visual lines of one paragraph: Chinese joins directly, Latin text by a space.

    A space at a line break is not printed. Between Latin text (a number) and Chinese
    it was there when the writer spaced that number on its other side too, as in
    ``共有 12 名``: the line ``…共有 12`` gets its space back before ``名``.
    """
    out = texts[0]
    for t in texts[1:]:
        head = out.rstrip("*")
        tail = t.lstrip("*")
        a, b = head[-1:], tail[:1]
        latin_a = bool(a) and a.isascii() and a.isalnum()
        latin_b = bool(b) and b.isascii() and b.isalnum()
        if latin_a and latin_b:
            space = True
        elif latin_a:
            space = bool(re.search(r"(?:^|\s)[A-Za-z0-9.%]+$", head)) and " " in head
        elif latin_b:
            space = bool(re.match(r"^[A-Za-z0-9.%]+\s", tail))
        else:
            space = False
        out = out + (" " if space else "") + t
    return out.replace("****", "")


def _is_date(text: str) -> bool:
    """The masthead's date line, in Arabic or Chinese numerals."""
    return bool(DATE_RE.search(text) or LOOSE_DATE_RE.search(text))
