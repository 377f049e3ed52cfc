"""Word files of the sample issue, made with python-docx the ways staff make them,
and PDFs printed from them by LibreOffice (headless, a private profile).

``write_word`` takes the content from the parsed text sample, so a reader that gets
it right gives back the very same ``Issue``. Where the printed sample was cut by a
page break inside a paragraph, the Word file has a page break at the same place, so
the PDF has those six cuts too (and the page breaks LibreOffice makes by itself).
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import docx
from docx.enum.text import WD_ALIGN_PARAGRAPH, WD_BREAK
from docx.oxml import OxmlElement
from docx.oxml.ns import qn
from docx.shared import Cm, Pt, RGBColor
from docx.text.paragraph import Paragraph

from mailer.issue import parse_text
from mailer.models import Block, BlockKind, Issue

SAMPLE = Path(__file__).parent / "data" / "bulletin-2015-09.txt"
BODY_PT = 12


@dataclass(frozen=True)
class Style:
    """How one member of staff makes the bulletin in Word."""

    indent: str = "format"  # "format": a first-line indent; "typed": 　　 typed
    titles: str = "star"  # "star": ☆ before the title; "format": centred, bold, larger
    end: str = "borders"  # "borders": paragraphs with rules; "table": a bordered table
    masthead: str = "tab"  # "tab": publisher<tab>date; "table": a borderless table
    picture: bool = False  # a picture after the first paragraph of the first article
    picture_cm: float = 8  # its width on the page
    running: bool = True  # a running header and page numbers in the footer


def sample_issue() -> Issue:
    return parse_text(SAMPLE.read_text(encoding="utf-8")).issue


def png(width: int, height: int, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A PNG of one colour (no image library needed to make one)."""
    row = b"\x00" + bytes(rgb) * width
    raw = zlib.compress(row * height)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw)
            + chunk(b"IEND", b""))


PICTURE = png(320, 160)


def page_cuts(issue: Issue) -> dict[int, list[int]]:
    """Where the printed sample's page breaks cut paragraphs: for a block's source
    line, the offsets in its text. The sample has six."""
    rows = SAMPLE.read_text(encoding="utf-8").split("\n")
    cuts: dict[int, list[int]] = {}
    for article in issue.articles:
        for block in article.blocks:
            k, done, offsets = block.line - 1, 0, []
            while True:
                done += len(rows[k].strip().replace("**", ""))
                if done >= len(block.text):
                    break
                offsets.append(done)
                k += 1
                while not rows[k].strip():
                    k += 1
            if offsets:
                cuts[block.line] = offsets
    return cuts


def write_word(path: Path, style: Style, issue: Issue | None = None, *,
               picture: bytes = PICTURE) -> Path:
    issue = issue or sample_issue()
    cuts = page_cuts(issue)
    d = docx.Document()
    normal = d.styles["Normal"]
    normal.font.size = Pt(BODY_PT)
    normal.element.get_or_add_rPr().get_or_add_rFonts().set(qn("w:eastAsia"), "宋体")
    if style.running:
        section = d.sections[0]
        section.header.paragraphs[0].text = "杭州市新经济与新社会组织党务工作者协会简报"
        _page_number(section.footer.paragraphs[0])

    m = issue.masthead
    notice = d.add_paragraph()
    left, _, right = m.notice.partition(" ")
    notice.add_run(left).add_break()
    notice.add_run(right)
    _centred(d.add_paragraph(), m.organisation, 16)
    title = _centred(d.add_paragraph(), m.title, 36)
    title.runs[0].font.color.rgb = RGBColor(0xCC, 0, 0)
    _centred(d.add_paragraph(), f"{m.year} 年第 {m.number} 期 总第 {m.total_number} 期",
             BODY_PT, bold=False)
    assert m.date is not None
    date = f"{m.date.year} 年 {m.date.month} 月 {m.date.day} 日"
    if style.masthead == "tab":
        d.add_paragraph(f"{m.publisher}\t{date}")
    else:
        t = d.add_table(rows=1, cols=2)  # the default table style has no borders
        t.cell(0, 0).text = m.publisher
        t.cell(0, 1).text = date
        t.cell(0, 1).paragraphs[0].alignment = WD_ALIGN_PARAGRAPH.RIGHT
    _border(d.add_paragraph(), "bottom", "CC0000")

    d.add_paragraph().add_run("【本期导读】").bold = True
    for n, entry in enumerate(issue.contents, 1):
        d.add_paragraph(f"{n}、{entry}")

    for k, article in enumerate(issue.articles):
        if style.titles == "star":
            d.add_paragraph().add_run("☆" + article.title).bold = True
        else:
            _centred(d.add_paragraph(), article.title, 16)
        for n, block in enumerate(article.blocks):
            _block(d.add_paragraph(), block, style, cuts.get(block.line, []))
            if style.picture and k == 0 and n == 0:
                d.add_picture(io.BytesIO(picture), width=Cm(style.picture_cm))

    end = []
    for line in issue.end.lines:
        end.append((f"{line.label}：", line.text))
    if style.end == "borders":
        for n, (label, text) in enumerate(end):
            p = d.add_paragraph(label + text)
            if n == 0:
                _border(p, "top")
            if n == len(end) - 1:
                _border(p, "bottom")
    else:
        t = d.add_table(rows=len(end), cols=2)
        t.style = d.styles["Table Grid"]
        for r, (label, text) in enumerate(end):
            t.cell(r, 0).text = label
            t.cell(r, 1).text = text
            t.cell(r, 0).width = Cm(1.5)
            t.cell(r, 1).width = Cm(14)
    d.save(str(path))
    return path


def _centred(p: Paragraph, text: str, size: float, *, bold: bool = True) -> Paragraph:
    p.alignment = WD_ALIGN_PARAGRAPH.CENTER
    run = p.add_run(text)
    run.bold = bold
    run.font.size = Pt(size)
    return p


def _block(p: Paragraph, block: Block, style: Style, cuts: list[int]) -> None:
    if style.indent == "format":
        p.paragraph_format.first_line_indent = Pt(2 * BODY_PT)
    else:
        p.add_run("\u3000\u3000")
    heading = block.kind is not BlockKind.PARAGRAPH
    pos = 0
    for span in block.spans:
        text = span.text
        while text:
            cut = next((c - pos for c in cuts if pos < c < pos + len(text)), len(text))
            run = p.add_run(text[:cut])
            run.bold = span.bold or (heading and style.titles == "format")
            pos += cut
            text = text[cut:]
            if pos in cuts:
                run.add_break(WD_BREAK.PAGE)


def _border(p: Paragraph, side: str, colour: str = "000000") -> None:
    ppr = p._p.get_or_add_pPr()
    bdr = ppr.find(qn("w:pBdr"))
    if bdr is None:
        bdr = OxmlElement("w:pBdr")
        ppr.append(bdr)
    edge = OxmlElement(f"w:{side}")
    for key, value in (("val", "single"), ("sz", "8"), ("space", "1"), ("color", colour)):
        edge.set(qn(f"w:{key}"), value)
    bdr.append(edge)


def _page_number(p: Paragraph) -> None:
    p.alignment = WD_ALIGN_PARAGRAPH.CENTER
    p.add_run("- ")
    field = OxmlElement("w:fldSimple")
    field.set(qn("w:instr"), "PAGE")
    run = OxmlElement("w:r")
    text = OxmlElement("w:t")
    text.text = "1"
    run.append(text)
    field.append(run)
    p._p.append(field)
    p.add_run(" -")


# --- printing --------------------------------------------------------------------


def soffice() -> str | None:
    return shutil.which("soffice") or shutil.which("libreoffice")


def print_pdf(sources: list[Path], out_dir: Path, profile: Path) -> list[Path]:
    """Print Word files to PDF with LibreOffice, all in one run (it starts slowly),
    with a profile of its own so that it never touches or waits for another."""
    exe = soffice()
    assert exe is not None
    subprocess.run(
        [exe, f"-env:UserInstallation={profile.as_uri()}", "--headless", "--norestore",
         "--convert-to", "pdf", "--outdir", str(out_dir), *map(str, sources)],
        check=True, capture_output=True, timeout=600,
    )
    return [out_dir / (s.stem + ".pdf") for s in sources]


def set_send_at(path: Path, value: str) -> None:
    """Give a Word file the custom document property send_at (File > Info >
    Properties > Advanced Properties > Custom), as text. python-docx writes no custom
    properties, so the part goes into the zip as Word writes it."""
    import zipfile

    ns = "http://schemas.openxmlformats.org/officeDocument/2006"
    custom = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        f'<Properties xmlns="{ns}/custom-properties" xmlns:vt="{ns}/docPropsVTypes">'
        '<property fmtid="{D5CDD505-2E9C-101B-9397-08002B2CF9AE}" pid="2" name="send_at">'
        f"<vt:lpwstr>{value}</vt:lpwstr></property></Properties>"
    )
    with zipfile.ZipFile(path) as z:
        items = {n: z.read(n) for n in z.namelist()}
    items["docProps/custom.xml"] = custom.encode()
    items["[Content_Types].xml"] = items["[Content_Types].xml"].replace(
        b"</Types>",
        b'<Override PartName="/docProps/custom.xml" ContentType="application/'
        b'vnd.openxmlformats-officedocument.custom-properties+xml"/></Types>',
    )
    items["_rels/.rels"] = items["_rels/.rels"].replace(
        b"</Relationships>",
        f'<Relationship Id="rIdCustom" Type="{ns}/relationships/custom-properties" '
        'Target="docProps/custom.xml"/></Relationships>'.encode(),
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in items.items():
            z.writestr(name, data)
