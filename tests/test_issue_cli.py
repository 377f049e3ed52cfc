"""`mailer issue check`, `issue convert` and `render` through the CLI."""

from __future__ import annotations

import email
import email.policy
import errno
import re
import shutil
from email.message import EmailMessage
from pathlib import Path

import pytest

from .conftest import REPO, Run, assert_one_line_error, refuse_with

ISSUE = REPO / "tests" / "data" / "bulletin-2015-09.txt"
SUBJECT = "简报 2015年第9期（总第33期）"
TITLES = [
    "万向职院落实党建工作责任制",
    "新世纪经贸学院党建工作",
    "西子集团党建",
    "协会动态之一",
    "协会动态之二",
]


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "bulletin-2015-09.txt"
    shutil.copyfile(ISSUE, path)
    return path


def articles(output: str) -> list[str]:
    """The article titles `issue check` lists ("    1. title  (n sections, m blocks)")."""
    return re.findall(r"^ {4}\d+\. (.+?)  \(\d+ sections, \d+ blocks\)$", output, re.M)


def test_check_the_sample(run: Run, sample: Path) -> None:
    out = run("issue", "check", str(sample)).stdout
    assert out.startswith(f"{sample.name}: {SUBJECT}\n")
    assert "date:          2015-11-24" in out
    assert "articles:      5" in out
    titles = articles(out)
    assert len(titles) == 5
    for title, start in zip(titles, TITLES, strict=True):
        assert title.startswith(start), (title, start)
    assert re.search(r"^  报：省委组织部.*张仲灿$", out, re.M)
    assert re.search(r"^  发：协会会员$", out, re.M)
    assert out.rstrip().endswith("ok")


def test_check_a_contents_entry_without_article(run: Run, sample: Path) -> None:
    lines = sample.read_text(encoding="utf-8").split("\n")
    last = max(i for i, ln in enumerate(lines) if ln.startswith("- 5、"))
    lines.insert(last + 1, "- 6、本期没有这篇文章。")
    sample.write_text("\n".join(lines), encoding="utf-8")
    result = run("issue", "check", str(sample), ok=False)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [ln for ln in result.stderr.splitlines() if "本期没有这篇文章" in ln]
    assert len(errors) == 1, result.stderr
    assert f"line {last + 2}" in errors[0]  # 1-based line of the inserted entry
    assert "ok" not in result.stdout.split("\n")[-2:]


def test_check_an_unknown_suffix(run: Run, sample: Path) -> None:
    doc = sample.with_suffix(".odt")
    sample.rename(doc)
    assert_one_line_error(run("issue", "check", str(doc), ok=False), "'.odt'", ".txt", ".md")
    assert_one_line_error(run("issue", "check", str(sample), ok=False), sample.name)


def test_convert_then_check_the_markdown(run: Run, sample: Path) -> None:
    before = articles(run("issue", "check", str(sample)).stdout)
    out = run("issue", "convert", str(sample)).stdout
    md = sample.with_suffix(".md")
    assert out.strip() == f"wrote {md}"
    assert md.read_text(encoding="utf-8").startswith("+++")
    check = run("issue", "check", str(md)).stdout
    assert articles(check) == before
    assert check.startswith(f"{md.name}: {SUBJECT}\n")

    written = md.read_bytes()
    refused = run("issue", "convert", str(sample), ok=False)
    assert_one_line_error(refused, "exists", "--force")
    assert md.read_bytes() == written
    md.write_text("edited by hand", encoding="utf-8")
    run("issue", "convert", str(sample), "--force")
    assert md.read_bytes() == written

    other = sample.parent / "other.md"
    run("issue", "convert", str(sample), "-o", str(other))
    assert other.read_bytes() == written
    refused = run("issue", "convert", str(sample), "-o", str(sample), "--force", ok=False)
    assert_one_line_error(refused, "is the input file")


@pytest.mark.parametrize("slug", ["send-to", "report-to"])
def test_render_writes_html_text_and_eml(
    run: Run, initialised: Path, sample: Path, tmp_path: Path, slug: str
) -> None:
    out = tmp_path / "preview"
    result = run("render", str(sample), "--list", slug, "--out", str(out))
    assert str(out / "issue.html") in result.stdout
    html = (out / "issue.html").read_bytes()
    assert 0 < len(html) < 90 * 1024
    text = (out / "issue.txt").read_text(encoding="utf-8")
    for title in TITLES:
        assert title in html.decode("utf-8") and title in text
    msg = email.message_from_bytes((out / "issue.eml").read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert str(msg["Subject"]) == SUBJECT
    assert not msg.defects
    if slug == "send-to":
        assert "https://bulletin.example.org/u/preview" in text
        assert msg["List-Unsubscribe"] is not None
    else:
        assert "/u/" not in text and msg["List-Unsubscribe"] is None


def test_convert_into_a_missing_folder_is_one_line(run: Run, sample: Path) -> None:
    target = sample.parent / "no" / "such" / "folder" / "issue.md"
    refused = run("issue", "convert", str(sample), "-o", str(target), ok=False)
    assert_one_line_error(refused, str(target.parent))
    assert not target.parent.exists()


@pytest.mark.parametrize("c", ["\r", "\u2028", "\t"])
def test_check_refuses_a_title_that_cannot_be_a_subject(run: Run, sample: Path, c: str) -> None:
    evil = f"简 报{c}Bcc:evil@attacker.example"
    text = sample.read_text(encoding="utf-8").replace("简 报", evil, 1)
    sample.write_bytes(text.encode("utf-8"))
    result = run("issue", "check", str(sample), ok=False)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [ln for ln in result.stderr.splitlines() if "line 8" in ln]
    assert len(errors) == 1, result.stderr


def test_convert_refusals_are_one_line_and_write_nothing(
    run: Run, sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = sample.parent / "a-folder.md"
    folder.mkdir()
    for args in ((), ("--force",)):
        refused = run("issue", "convert", str(sample), "-o", str(folder), *args, ok=False)
        assert_one_line_error(refused, str(folder), "is a folder")
    target = sample.parent / "issue.md"
    with monkeypatch.context() as m:  # root ignores file modes: make the folder refuse
        m.setattr("tempfile.mkstemp", refuse_with(errno.EACCES))
        refused = run("issue", "convert", str(sample), "-o", str(target), ok=False)
    assert_one_line_error(refused, str(target), "permission denied", "choose a folder")
    assert not target.exists()
    target.write_text("the good old one", encoding="utf-8")
    with monkeypatch.context() as m:  # the disk fills up while writing
        m.setattr("os.replace", refuse_with(errno.ENOSPC))
        refused = run("issue", "convert", str(sample), "-o", str(target), "--force", ok=False)
    assert_one_line_error(refused, str(target), "disk is full")
    assert target.read_text(encoding="utf-8") == "the good old one"
    assert not [p.name for p in sample.parent.iterdir() if p.name.startswith(".")]  # no temp


def test_render_refusals_are_one_line(
    run: Run, initialised: Path, sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_file = tmp_path / "preview"
    a_file.write_text("not a folder", encoding="utf-8")
    refused = run("render", str(sample), "--out", str(a_file), ok=False)
    assert_one_line_error(refused, str(a_file), "not a folder")
    (tmp_path / "out" / "issue.html").mkdir(parents=True)
    refused = run("render", str(sample), "--out", str(tmp_path / "out"), ok=False)
    assert_one_line_error(refused, str(tmp_path / "out" / "issue.html"), "is a folder")
    with monkeypatch.context() as m:
        m.setattr("pathlib.Path.mkdir", refuse_with(errno.EACCES))
        refused = run("render", str(sample), "--out", str(tmp_path / "new"), ok=False)
    assert_one_line_error(refused, str(tmp_path / "new"), "permission denied")
    assert not (tmp_path / "new").exists()
