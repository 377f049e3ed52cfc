"""Word (.docx) issues, read with python-docx into the plain bulletin text.

What staff do in Word and what it becomes:

- a paragraph is a line; a first-line indent, set as formatting or typed as ``　　``,
  is dropped (the email indents every paragraph itself, so it is never doubled);
- a bold run inside a paragraph is ``**…**``; a paragraph bold throughout is a
  heading or a title, whose formatting the email sets itself;
- an article title is marked ☆/★, or only formatted: centred, bold and larger than
  the body text (after the masthead, whose lines look the same);
- the publisher and the date on one line, split by a tab, or in a borderless table,
  are two lines; a table row whose first cell is only ``报：`` reads as one 报 line;
- a picture placed in the text goes into the email (``extracted.Picture``); one that
  only links to an outside file is not fetched (python-docx never opens one).

python-docx rather than mammoth: titles are told by size and alignment, which
mammoth's HTML drops; and it reads nothing outside the file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import zipfile
from collections import Counter
from dataclasses import dataclass, field

import docx
from docx.enum.style import WD_STYLE_TYPE
from docx.enum.text import WD_ALIGN_PARAGRAPH
from docx.opc.exceptions import PackageNotFoundError
from docx.oxml.ns import qn
from docx.oxml.parser import parse_xml
from docx.styles.style import BaseStyle
from docx.table import Table
from docx.text.paragraph import Paragraph
from docx.text.run import Run

from mailer.errors import IssueError
from mailer.models import Image

from .common import Problem
from .extracted import DATE_LIKE_RE, END_LABEL_RE, Extracted, Line, Picture
from .text import _CONTENTS_RE, _ISSUE_RE

_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # a compound file: .doc, or an encrypted .docx
_ENCRYPTED = "EncryptionInfo".encode("utf-16-le")
_EMU_PER_PX = 9525
_DEFAULT_PT = 10.5  # 五号, Word's body size for Chinese documents
_SAVE_DOCX = "open it in Word and choose File > Save As > Word Document (*.docx)"

IMAGE_LIMIT = 1024 * 1024
"""Bytes: a bigger picture is left out of the email with a warning naming it. The
email goes to every unit; a phone on mobile data should not fetch megabytes."""

_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif"}


def read(data: bytes, name: str) -> Extracted:
    """The text, pictures and problems of a .docx file's bytes.

    Raises ``IssueError`` (one line, saying how to save it) for an old .doc, a
    password-protected file or anything that is not a Word document.
    """
    if data.startswith(_OLE):
        if _ENCRYPTED in data:
            raise IssueError(
                f"{name} is password-protected: open it in Word, remove the password "
                "(File > Info > Protect Document > Encrypt with Password, clear it), "
                "save, and try again"
            )
        raise IssueError(f"{name} is an old Word document (.doc): {_SAVE_DOCX}")
    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as e:
        raise IssueError(f"{name} is not a Word document ({e}); {_SAVE_DOCX}") from None
    reader = _Reader(document)
    reader.read()
    extracted = reader.extracted()
    return dataclasses.replace(extracted, send_at=_send_at(document, reader.problems),
                               problems=tuple(reader.problems))


_SEND_AT_NAMES = ("send_at", "发送时间")


def _send_at(document: docx.document.Document, problems: list[Problem]) -> dt.datetime | None:
    """When to send, from the document's custom property ``send_at`` (Word: File > Info >
    Properties > Advanced Properties > Custom), text ``2026-12-02 09:00`` in the
    configured time zone, or of type Date. None when there is none."""
    for part in document.part.package.iter_parts():
        if str(part.partname) != "/docProps/custom.xml":
            continue
        try:
            root = parse_xml(part.blob)  # python-docx's parser: no entities, no network
        except SyntaxError:  # lxml's XMLSyntaxError is one
            return None
        for prop in root:
            if str(prop.get("name", "")).strip().lower() not in _SEND_AT_NAMES:
                continue
            value = "".join(prop.itertext()).strip()
            try:
                return dt.datetime.fromisoformat(value)
            except ValueError:
                problems.append(Problem(
                    0, f"the document property send_at is {value!r}: write it as "
                    "2026-12-02 09:00", "error", where="document properties"))
    return None


# --- one paragraph ----------------------------------------------------------------


@dataclass
class _Para:
    chars: list[tuple[str, bool]]  # (character, bold)
    where: str
    centred: bool = False
    size: float = _DEFAULT_PT
    pictures: list[Image] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c for c, _ in self.chars).strip()

    @property
    def all_bold(self) -> bool:
        seen = [b for c, b in self.chars if not c.isspace()]
        return bool(seen) and all(seen)


def _style_value(style: BaseStyle | None, get: str) -> object:
    """A font or paragraph property as a style and the styles it is based on set it."""
    while style is not None:
        value: object
        if get == "alignment":
            value = getattr(getattr(style, "paragraph_format", None), "alignment", None)
        else:
            value = getattr(getattr(style, "font", None), get, None)
        if value is not None:
            return value
        style = getattr(style, "base_style", None)
    return None


class _Styles:
    """The style values of paragraphs and runs, each looked up once per document.

    python-docx finds a paragraph's or a run's style by scanning every style of the
    document on each access: that was 0.9 s of a 1 s read of the sample."""

    def __init__(self, document: docx.document.Document) -> None:
        self.part = document.part
        self.values: dict[tuple[str | None, WD_STYLE_TYPE, str], object] = {}

    def value(self, item: Paragraph | Run, get: str) -> object:
        if isinstance(item, Paragraph):
            key = (item._p.style, WD_STYLE_TYPE.PARAGRAPH, get)
        else:
            key = (item._r.style, WD_STYLE_TYPE.CHARACTER, get)
        if key not in self.values:
            self.values[key] = _style_value(self.part.get_style(key[0], key[1]), get)
        return self.values[key]

    def bold(self, run: Run, paragraph: Paragraph) -> bool:
        for value in (run.bold, self.value(run, "bold"), self.value(paragraph, "bold")):
            if value is not None:
                return bool(value)
        return False

    def size(self, run: Run, paragraph: Paragraph, default: float) -> float:
        for value in (run.font.size, self.value(run, "size"), self.value(paragraph, "size")):
            if value is not None:
                return float(getattr(value, "pt", default))
        return default

    def centred(self, paragraph: Paragraph) -> bool:
        align = paragraph.alignment
        if align is None:
            align = self.value(paragraph, "alignment")  # type: ignore[assignment]
        return align in (WD_ALIGN_PARAGRAPH.CENTER, WD_ALIGN_PARAGRAPH.DISTRIBUTE)


# --- the document -------------------------------------------------------------------


class _Reader:
    def __init__(self, document: docx.document.Document) -> None:
        self.document = document
        self.paras: list[_Para] = []
        self.problems: list[Problem] = []
        self.count = 0  # non-empty paragraphs so far: "paragraph N" as staff count them
        self.tables = 0
        self.styles = _Styles(document)
        size = _style_value(document.styles.default(WD_STYLE_TYPE.PARAGRAPH), "size")
        self.default = float(getattr(size, "pt", _DEFAULT_PT))

    def read(self) -> None:
        for item in self.document.iter_inner_content():
            if isinstance(item, Paragraph):
                self.paragraph(item, None)
            else:
                self.tables += 1
                self.table(item, f"table {self.tables}")

    def paragraph(self, paragraph: Paragraph, where: str | None) -> None:
        chars: list[tuple[str, bool]] = []
        sizes: Counter[float] = Counter()
        pictures: list[Image] = []
        # A picture alone in its paragraph is named by the paragraph before it.
        place = where or (f"paragraph {self.count + 1}" if paragraph.text.strip()
                          else f"after paragraph {self.count}")
        for run in paragraph.runs:
            bold = self.styles.bold(run, paragraph)
            text = run.text
            chars += [(c, bold) for c in text]
            if text.strip():
                sizes[self.styles.size(run, paragraph, self.default)] += len(text.strip())
            pictures += self.pictures(run, place)
        text = "".join(c for c, _ in chars).strip()
        if not text and not pictures:
            return
        if text:
            self.count += 1
        para = _Para(
            chars, place, centred=self.styles.centred(paragraph),
            size=sizes.most_common(1)[0][0] if sizes else self.default, pictures=pictures,
        )
        self.paras.append(para)

    def table(self, table: Table, where: str) -> None:
        for r, row in enumerate(table.rows, 1):
            seen: set[int] = set()
            label: _Para | None = None
            for cell in row.cells:
                if id(cell._tc) in seen:  # a merged cell comes once per grid column
                    continue
                seen.add(id(cell._tc))
                start = len(self.paras)
                for item in cell.iter_inner_content():
                    if isinstance(item, Paragraph):
                        self.paragraph(item, f"{where}, row {r}")
                    else:
                        self.table(item, f"{where}, row {r}")
                if label is not None and len(self.paras) > start:
                    # 报： | 省委组织部、… : one end-block line, as printed.
                    first = self.paras.pop(start)
                    colon = [] if label.text.endswith(("：", ":")) else [("：", False)]
                    label.chars = [(c, False) for c in label.text] + colon + first.chars
                    label = None
                cell_paras = self.paras[start:]
                if len(cell_paras) == 1 and END_LABEL_RE.match(cell_paras[0].text):
                    label = cell_paras[0]

    def pictures(self, run: Run, place: str) -> list[Image]:
        found: list[Image] = []
        for blip in run._r.xpath(".//a:blip"):
            rid = blip.get(qn("r:embed"))
            if not rid:
                self.problems.append(Problem(0, "a picture linked to an outside file is not "
                                             "sent; insert the picture itself", "warning",
                                             where=place))
                continue
            part = self.document.part.related_parts.get(rid)
            blob = getattr(part, "blob", b"")
            content_type = getattr(part, "content_type", "")
            label = f"{str(getattr(part, 'partname', 'image')).rsplit('/', 1)[-1]} ({place})"
            if content_type not in _IMAGE_TYPES:
                self.problems.append(Problem(
                    0, f"picture {label} is {content_type or 'of an unknown kind'}, which mail "
                    "readers do not show; save it as PNG or JPEG and insert it again",
                    "warning", where=place))
                continue
            if len(blob) > IMAGE_LIMIT:
                self.problems.append(Problem(
                    0, f"picture {label} is {len(blob) / 1048576:.1f} MB, over the "
                    f"{IMAGE_LIMIT // 1048576} MB a picture may have in the email; it is not "
                    "sent: compress it in Word (Picture Format > Compress Pictures) and "
                    "save again", "warning", where=place))
                continue
            width = height = 0
            extent = run._r.xpath(".//wp:extent")
            if extent:
                width = int(extent[0].get("cx", "0")) // _EMU_PER_PX
                height = int(extent[0].get("cy", "0")) // _EMU_PER_PX
            found.append(Image(blob, content_type, label, width, height))
        return found

    # --- into lines -------------------------------------------------------------

    def extracted(self) -> Extracted:
        body = Counter[float]()
        for p in self.paras:
            body[p.size] += len(p.text)
        body_size = body.most_common(1)[0][0] if body else self.default
        lines: list[Line] = []
        pictures: list[Picture] = []
        masthead_done = False  # formatting alone marks a title only after the masthead
        issue_seen = False
        for p in self.paras:
            for text in _lines_of(p, in_masthead=not masthead_done):
                if _ISSUE_RE.match(text):
                    issue_seen = True
                elif _CONTENTS_RE.match(text) or (issue_seen and DATE_LIKE_RE.search(text)):
                    masthead_done = True  # the date line or 【本期导读】 closes it
                elif (masthead_done and p.centred and p.all_bold and p.size > body_size + 0.5
                      and not text.startswith(("☆", "★")) and not _CONTENTS_RE.match(text)):
                    text = "☆" + text
                lines.append(Line(text, p.where))
            pictures += [Picture(len(lines), im, p.where) for im in p.pictures]
        return Extracted(tuple(lines), tuple(pictures), tuple(self.problems))


def _lines_of(p: _Para, *, in_masthead: bool) -> list[str]:
    """The text lines of one paragraph: bold runs marked unless all of it is bold;
    a line break or, in the masthead, a tab before a date parts it into lines."""
    chars = p.chars
    marked = not p.all_bold
    out: list[str] = []
    buf: list[str] = []
    bold = False
    for c, b in [*chars, ("\n", False)]:
        if c == "\t" and not in_masthead:
            c = " "
        if marked and b != bold and c not in "\n\t" and not c.isspace():
            if b:
                buf.append("**")
            else:
                _close(buf)
            bold = b
        if c in "\n\t":
            if bold:
                _close(buf)
                bold = False
            out.append("".join(buf))
            buf = []
            continue
        buf.append(c)
    lines = [_tidy(s) for s in out]
    # The publisher and the date on one line, split by a tab: two lines. Any other
    # tab (内部刊物<tab>注意保存) is a space.
    tabbed = in_masthead and "\t" in "".join(c for c, _ in chars)
    if tabbed and not any(DATE_LIKE_RE.search(s) for s in lines):
        lines = [" ".join(lines)]
    return [s for s in lines if s]


def _close(buf: list[str]) -> None:
    """Close a bold run before the spaces that end it: ``**`` does not close after a
    space. (Spaces never open one, so an opening mark already follows them.)"""
    spaces: list[str] = []
    while buf and buf[-1].isspace():
        spaces.append(buf.pop())
    buf.append("**")
    buf += reversed(spaces)


def _tidy(text: str) -> str:
    """Without the indent (typed 　　 or spaces) and without empty bold marks."""
    return text.replace("****", "").strip()
