"""The PDF edition, typeset by WeasyPrint with Debian's Noto CJK fonts and read back
with pdfplumber; its pages are turned into images with pdftoppm for a person to
look at (build/screenshots/)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pdfplumber
import pytest

from .conftest import REPO, SAMPLE_ISSUE, Run
from .sample_issue import sample_issue

SCREENSHOTS = REPO / "build" / "screenshots"
MAX_BYTES = 1_500_000


def squeeze(text: str) -> str:
    return "".join(text.split())


@pytest.fixture(scope="module")
def pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mailer.models import Role
    from mailer.pdf import render_pdf
    from mailer.render import Audience

    audience = Audience(role=Role.SEND_TO, list_title="简报发送名单", footer_label="发",
                        allow_unsubscribe=True, contact="协会秘书处")
    path = tmp_path_factory.mktemp("pdf") / "issue.pdf"
    path.write_bytes(render_pdf(sample_issue(), audience))
    return path


def test_a4_with_every_article_and_fonts_embedded(pdf: Path) -> None:
    assert pdf.stat().st_size < MAX_BYTES, f"{pdf.stat().st_size} bytes"
    with pdfplumber.open(pdf) as doc:
        for page in doc.pages:
            assert (round(page.width), round(page.height)) == (595, 842)  # A4 in points
        text = squeeze("".join(p.extract_text() or "" for p in doc.pages))
        first = doc.pages[0]
        red = [c for c in first.chars if c["text"] in "简报"
               and c.get("non_stroking_color") not in (None, (0,), [0], (0, 0, 0), [0, 0, 0])]
        assert red, "the 报头 is not red"
        fonts = {c["fontname"] for p in doc.pages for c in p.chars}
    # A subset font's name carries a six-letter tag: ABCDEF+NotoSerifCJK...
    assert fonts and all("+" in f and "Noto" in f for f in fonts), fonts
    issue = sample_issue()
    where = [text.find(squeeze(a.title)) for a in issue.articles]
    assert len(where) == 5 and all(w >= 0 for w in where), where
    assert where == sorted(where), "the articles are out of order"


def test_banji_lines_in_order_at_the_end(pdf: Path) -> None:
    with pdfplumber.open(pdf) as doc:
        last = doc.pages[-1].extract_text() or ""
        lines = [ln.strip() for ln in last.splitlines() if ln.strip()]
        rules = [e for e in doc.pages[-1].lines + doc.pages[-1].rects
                 if abs(e["x1"] - e["x0"]) > 300]
    starts = [i for i, ln in enumerate(lines) if ln.startswith(("报：", "发："))]
    assert [lines[i][:2] for i in starts] == ["报：", "发："], lines
    yinfa = next(ln for ln in lines if ln.endswith("印发"))
    assert yinfa.startswith("杭州市“两新”党务工作者协会") and "2015年11月24日印发" in yinfa
    assert lines.index(yinfa) > starts[-1]
    assert len(rules) >= 4, "the 版记 has its rules: first, between the lines, last"


def test_pages_as_images(pdf: Path) -> None:
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is not installed; `make system-deps`")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("pdf-*.png"):
        old.unlink()
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(pdf), str(SCREENSHOTS / "pdf")],
                   check=True, timeout=120)
    with pdfplumber.open(pdf) as doc:
        pages = len(doc.pages)
    images = sorted(SCREENSHOTS.glob("pdf-*.png"))
    assert len(images) == pages and all(i.stat().st_size > 5_000 for i in images)


def test_render_pdf_from_the_cli(initialised: Path, run: Run, tmp_path: Path) -> None:
    out = tmp_path / "preview"
    done = run("render", str(SAMPLE_ISSUE), "--list", "send-to", "--out", str(out), "--pdf")
    assert "PDF edition" in done.output
    with pdfplumber.open(out / "issue.pdf") as doc:
        assert "简" in (doc.pages[0].extract_text() or "")
