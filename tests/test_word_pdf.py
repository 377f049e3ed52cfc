"""Issues straight from Word and from the PDF LibreOffice prints of it.

The Word files are made the ways staff make them (tests/word_issue.py); each, and
the PDF printed from it, must give the very Issue the text sample gives.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import functools
import io
import os
import re
import shutil
import struct
import subprocess
import zlib
from email.message import EmailMessage
from pathlib import Path

import docx
import pdfplumber
import pytest
from docx.shared import Cm

from mailer.issue import ParseResult, parse_file
from mailer.issue.word import IMAGE_LIMIT
from mailer.models import BlockKind, Issue

from .conftest import Run, assert_one_line_error, made_once
from .word_issue import (
    PICTURE,
    Style,
    page_cuts,
    png,
    print_pdf,
    sample_issue,
    set_send_at,
    soffice,
    write_word,
)

STYLES = {
    # ☆ titles, indents set as formatting, the end block between rules, the
    # publisher<tab>date, a running header and page numbers.
    "star": Style(),
    # Titles only centred, bold and larger; indents typed as 　　; the end block and the
    # publisher/date line in tables; a picture.
    "formatted": Style(indent="typed", titles="format", end="table", masthead="table",
                       picture=True),
}
# Where the printed sample's page breaks cut paragraphs: how the next page begins.
CUT_STARTS = ("发展的党员", "合，分成", "增强，真正", "常，导致", "新组织党务", "协会承办。")


@functools.cache
def parsed(path: Path) -> ParseResult:
    """Each of the session's files parsed once per test process (a PDF takes about a
    second; parsing is a function of the bytes). The tests that change a file, or
    parse through the CLI, parse for themselves."""
    return parse_file(path)


def without_pictures(issue: Issue) -> Issue:
    articles = tuple(
        dataclasses.replace(a, blocks=tuple(b for b in a.blocks if b.kind is not BlockKind.IMAGE))
        for a in issue.articles
    )
    return dataclasses.replace(issue, articles=articles)


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The Word files, and their PDFs printed in one LibreOffice run (it is slow to
    start) with a profile of its own, once for the whole test run."""
    if soffice() is None:
        pytest.skip("LibreOffice is not installed: `make test` installs it")
    folder = made_once(tmp_path_factory, "word", _write_and_print)
    return {p.name: p for p in folder.iterdir() if p.suffix in (".docx", ".pdf")}


def _write_and_print(folder: Path) -> None:
    out = [write_word(folder / f"{name}.docx", style) for name, style in STYLES.items()]
    bad = sample_issue()
    bad = dataclasses.replace(bad, contents=(*bad.contents[:2], "本期没有这篇文章。",
                                             *bad.contents[3:]))
    out.append(write_word(folder / "bad.docx", Style(), bad))
    # A page that is only a picture, as a scanner makes it.
    scan = docx.Document()
    scan.add_picture(io.BytesIO(png(400, 560, (240, 240, 240))), width=Cm(15))
    scan.save(str(folder / "scan.docx"))
    out.append(folder / "scan.docx")
    profile = folder / "lo-profile"
    print_pdf(out, folder, profile)
    shutil.rmtree(profile)


def test_the_sample_is_what_the_word_files_hold() -> None:
    issue = sample_issue()
    assert len(issue.articles) == 5
    assert [a.section_count for a in issue.articles] == [4, 3, 3, 0, 0]
    assert sum(len(v) for v in page_cuts(issue).values()) == 6


@pytest.mark.parametrize("name", STYLES)
@pytest.mark.parametrize("kind", [".docx", ".pdf"])
def test_word_and_pdf_give_the_sample_issue(files: dict[str, Path], name: str,
                                            kind: str) -> None:
    result = parsed(files[name + kind])
    sample = sample_issue()
    assert without_pictures(result.issue) == sample
    issue = result.issue
    assert len(issue.articles) == 5
    assert [a.section_count for a in issue.articles] == [4, 3, 3, 0, 0]
    assert issue.masthead.date == sample.masthead.date
    assert [(ln.label, ln.text) for ln in issue.end.lines] == [
        (ln.label, ln.text) for ln in sample.end.lines
    ]
    assert "张仲灿" in issue.end.lines[0].names
    assert not result.errors, result.errors


def test_a_word_picture_is_an_image_block(files: dict[str, Path]) -> None:
    issue = parsed(files["formatted.docx"]).issue
    blocks = issue.articles[0].blocks
    assert blocks[1].kind is BlockKind.IMAGE and blocks[1].image is not None
    image = blocks[1].image
    assert image.data == PICTURE and image.content_type == "image/png"
    assert 290 <= image.width <= 310 and image.height == image.width // 2  # 8 cm
    assert "paragraph" in image.name
    assert sum(b.kind is BlockKind.IMAGE for a in issue.articles for b in a.blocks) == 1
    # The PDF cannot carry it into the email, and says so.
    problems = parsed(files["formatted.pdf"]).problems
    assert any("picture" in p.message and p.place.startswith("page ") for p in problems)


def test_the_pdf_joins_paragraphs_across_its_page_breaks(files: dict[str, Path]) -> None:
    with pdfplumber.open(files["star.pdf"]) as pdf:
        starts = []
        for page in pdf.pages:
            lines = [ln["text"] for ln in page.extract_text_lines()]
            body = [t for t in lines if not t.startswith("杭州市新经济") and t.strip()]
            starts.append(body[0] if body else "")
    for cut in CUT_STARTS:  # the six page breaks of the printed sample
        assert any(s.startswith(cut) for s in starts), (cut, starts)
    # ... and each came back whole (the issue equals the sample's).
    issue = parsed(files["star.pdf"]).issue
    texts = [b.text for a in issue.articles for b in a.blocks]
    assert any("新发展的党员" in t for t in texts)
    assert any("市两新组织党务工作者协会承办。" in t for t in texts)


def test_running_headers_and_page_numbers_are_dropped(files: dict[str, Path]) -> None:
    with pdfplumber.open(files["star.pdf"]) as pdf:
        assert len(pdf.pages) >= 7
        footer = pdf.pages[2].extract_text_lines()[-1]["text"]
    assert footer.replace(" ", "") == "-3-"
    issue = parsed(files["star.pdf"]).issue
    texts = [b.text for a in issue.articles for b in a.blocks]
    assert not any(t.startswith("杭州市新经济") or t.replace(" ", "").startswith("-")
                   for t in texts)


def test_problems_name_the_paragraph_or_the_page(files: dict[str, Path], run: Run) -> None:
    word = parsed(files["bad.docx"])
    pdf = parsed(files["bad.pdf"])
    for result, place in ((word, "paragraph 9"), (pdf, "page 1")):
        [error] = result.errors
        assert error.place == place, error
        assert "contents entry 3" in error.message
    out = run("issue", "check", str(files["bad.docx"]), ok=False)
    assert out.exit_code == 1
    assert "bad.docx: paragraph 9: error: contents entry 3" in out.stderr


def test_every_issue_command_takes_word_and_pdf(files: dict[str, Path], run: Run,
                                                initialised: Path, tmp_path: Path) -> None:
    for name in ("star.docx", "formatted.pdf"):
        out = run("issue", "check", str(files[name])).stdout
        assert "articles:      5" in out and "报：省委组织部" in out
        md = tmp_path / (name + ".md")
        run("issue", "convert", str(files[name]), "-o", str(md))
        again = parse_file(md)
        assert again.issue == without_pictures(parsed(files[name]).issue)
        assert "\u3000" not in md.read_text(encoding="utf-8")  # no doubled indent
        preview = tmp_path / name
        run("render", str(files[name]), "--out", str(preview))
        assert "协会动态之二" in (preview / "issue.html").read_text(encoding="utf-8")


def test_old_word_files_and_scans_get_one_line(run: Run, tmp_path: Path) -> None:
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504
    cases = {
        "old.doc": (ole, "Save As > Word Document (*.docx)"),
        "old.docx": (ole, "old Word document (.doc)"),
        "locked.docx": (ole + "EncryptionInfo".encode("utf-16-le"), "password-protected"),
        "notword.docx": (b"hello", "not a Word document"),
        "notpdf.pdf": (b"%PDF-1.4 nothing", "cannot be read as a PDF"),
    }
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert_one_line_error(run("issue", "check", str(tmp_path / name), ok=False),
                              name, words)


@pytest.mark.skipif(shutil.which("qpdf") is None,
                    reason="qpdf is not installed: `make test` installs it")
def test_a_password_protected_pdf_gets_one_line(files: dict[str, Path], run: Run,
                                                initialised: Path, tmp_path: Path) -> None:
    printed = files["star.pdf"]
    locked = tmp_path / "locked.pdf"  # a password to open it, AES-256 as printers set it
    subprocess.run(["qpdf", "--encrypt", "open-sesame", "owner-pw", "256", "--",
                    str(printed), str(locked)], check=True, capture_output=True, timeout=60)
    assert b"/Encrypt" in locked.read_bytes()
    for command in (["issue", "check", str(locked)],
                    ["render", str(locked), "--out", str(tmp_path / "out")]):
        assert_one_line_error(run(*command, ok=False), "locked.pdf is password-protected",
                              "without a password", ".docx")
    assert not (tmp_path / "out").exists()  # nothing half-written
    # Only a permissions password (no copying, no printing): every reader opens it
    # without asking, and so does mailer.
    restricted = tmp_path / "restricted.pdf"
    subprocess.run(["qpdf", "--encrypt", "", "owner-pw", "256", "--extract=n", "--print=none",
                    "--", str(printed), str(restricted)],
                   check=True, capture_output=True, timeout=60)
    assert b"/Encrypt" in restricted.read_bytes()
    assert without_pictures(parse_file(restricted).issue) == sample_issue()


def test_a_pdf_without_text_is_a_scan(files: dict[str, Path], run: Run) -> None:
    assert_one_line_error(run("issue", "check", str(files["scan.pdf"]), ok=False),
                          "scan.pdf", "no text", "(a scan)")


def test_a_word_picture_goes_into_the_email_inline(files: dict[str, Path], run: Run,
                                                   initialised: Path, tmp_path: Path) -> None:
    out = tmp_path / "preview"
    run("render", str(files["formatted.docx"]), "--out", str(out))
    msg = email.message_from_bytes((out / "issue.eml").read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage) and not msg.defects
    text, related = msg.iter_parts()
    assert related.get_content_type() == "multipart/related"
    html_part, picture = related.iter_parts()
    assert html_part.get_content_type() == "text/html"
    assert picture.get_content_type() == "image/png"
    assert picture.get_content() == PICTURE
    cid = picture["Content-ID"].strip("<>")
    html = html_part.get_content()
    img = re.search(r'<img class="pic" src="cid:([^"]+)"[^>]*>', html)
    assert img and img.group(1) == cid
    assert 'width="302"' in img.group(0) and "max-width:100%" in img.group(0).replace(" ", "")
    assert "［此处为图片" in text.get_content()
    assert f'src="cid:{cid}"' in (out / "issue.html").read_text(encoding="utf-8")


def test_a_picture_over_the_cap_is_left_out_and_named(tmp_path: Path) -> None:
    raw = zlib.compress(os.urandom(IMAGE_LIMIT + 4096), 0)
    big = PICTURE[:33] + struct.pack(">I", len(raw)) + b"IDAT" + raw + b"\0\0\0\0" + PICTURE[-12:]
    issue = sample_issue()
    path = write_word(tmp_path / "big.docx", Style(picture=True), issue, picture=big)
    result = parse_file(path)
    assert without_pictures(result.issue) == result.issue == issue
    [warning] = [p for p in result.warnings if "picture" in p.message]
    assert warning.place == "after paragraph 13"  # the first of article 1
    assert "image1.png" in warning.message and "1.0 MB" in warning.message
    assert "Compress Pictures" in warning.message


def test_send_at_from_the_word_document_properties(tmp_path: Path, run: Run) -> None:
    path = write_word(tmp_path / "timed.docx", Style())
    set_send_at(path, "2026-12-02 09:00")
    assert parse_file(path).issue.send_at == dt.datetime(2026, 12, 2, 9, 0)
    assert "send at:       2026-12-02 09:00" in run("issue", "check", str(path)).stdout
    set_send_at(path, "next tuesday")
    [error] = parse_file(path).errors
    assert error.place == "document properties"
    assert "'next tuesday': write it as 2026-12-02 09:00" in error.message


def test_convert_names_each_picture_the_markdown_cannot_carry(tmp_path: Path, run: Run) -> None:
    path = write_word(tmp_path / "pictured.docx", Style(picture=True))
    second = docx.Document(str(path))  # a second one, inline in article 3's first paragraph
    start = sample_issue().articles[2].blocks[0].text[:12]
    [para] = [p for p in second.paragraphs if p.text.strip().startswith(start)]
    para.add_run().add_picture(io.BytesIO(png(200, 100, (30, 30, 200))), width=Cm(5))
    second.save(str(path))
    pictures = [b.image for a in parse_file(path).issue.articles for b in a.blocks
                if b.image is not None]
    assert len(pictures) == 2
    out = tmp_path / "pictured.md"
    result = run("issue", "convert", str(path), "-o", str(out))
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 2, result.stderr
    for picture, warning in zip(pictures, warnings, strict=True):
        assert f"picture {picture.name} is not in the Markdown file" in warning
        assert "cannot carry pictures" in warning
    assert "image1.png (after paragraph 13)" in warnings[0]
    # The rest is all there, and reads back as the issue without its pictures.
    assert parse_file(out).issue == without_pictures(parse_file(path).issue)
    # A file without pictures converts without a word of warning.
    plain = write_word(tmp_path / "plain.docx", Style())
    assert "warning" not in run("issue", "convert", str(plain), "-o",
                                str(tmp_path / "plain.md")).stderr
