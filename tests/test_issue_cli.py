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
from click.testing import CliRunner, Result

from mailer.cli import cli
from mailer.issue import check_punctuation

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


# --- the end block (版记) as written ---------------------------------------------


def test_render_right_after_init_shows_the_issues_own_end_block(
    run: Run, initialised: Path, sample: Path, tmp_path: Path
) -> None:
    """With no recipients yet the end block was empty: two rules with nothing between."""
    out = tmp_path / "d"
    result = run("render", str(sample), "--out", str(out))
    assert result.stderr.splitlines() == [
        "warning: the 报： line names 7 bodies, but report-to has no addresses yet; they "
        "will not receive it",
        "warning: the 发： line names 协会会员, but send-to has no addresses yet; they will "
        "not receive it",
    ]
    text = (out / "issue.txt").read_text(encoding="utf-8")
    block = text.split("=" * 72 + "\n")[2]  # after the masthead's rule and the 版记's first
    lines = [ln.strip() for ln in block.splitlines()]
    assert "".join(lines[:-1]) == (
        "报：省委组织部、省委“两新”工委，市委组织部、市委“两新”工委，各区、县（市）委组织部、"
        "各区、县（市）委“两新”工委、张仲灿"
    )
    assert lines[-1] == "发：协会会员"
    html = (out / "issue.html").read_text(encoding="utf-8")
    assert re.search(r">报：</td><td[^>]*>省委组织部、省委“两新”工委，[^<]*、张仲灿</td>", html)
    assert re.search(r">发：</td><td[^>]*>协会会员</td>", html)


ISSUED_END = (
    "报送：省委组织部、市委组织部\n\n抄送：各片组。\n\n发：协会会员\n\n"
    "杭州市“两新”党务工作者协会秘书处　　二〇一五年十一月二十四日印发\n\n（共印 60 份）\n"
)


def with_end(sample: Path, end: str) -> Path:
    text = sample.read_text(encoding="utf-8")
    body = text[: text.rindex("报：")]
    sample.write_text(body + end, encoding="utf-8")
    return sample


def test_every_line_of_the_end_block_is_rendered_as_written_in_order(
    run: Run, initialised: Path, sample: Path, tmp_path: Path
) -> None:
    with_end(sample, ISSUED_END)
    out = tmp_path / "d"
    run("render", str(sample), "--out", str(out))
    text = (out / "issue.txt").read_text(encoding="utf-8")
    block = [ln for ln in text.split("=" * 72 + "\n")[2].splitlines() if ln.strip()]
    assert [ln.strip() for ln in block] == [
        "报送：省委组织部、市委组织部",
        "抄送：各片组。",
        "发：协会会员",
        block[3].strip(),
        "（共印 60 份）",
    ]
    # The issuing body at the left margin, the date at the right one.
    assert re.fullmatch(r"杭州市“两新”党务工作者协会秘书处 {2,}二〇一五年十一月二十四日印发",
                        block[3])
    assert block[4].startswith(" ") and block[4].endswith("（共印 60 份）")
    html = (out / "issue.html").read_text(encoding="utf-8")
    cells = re.findall(r"<td[^>]*>([^<]+)</td\s*>", html.split('class="endt"')[1])
    assert cells == [
        "报送：", "省委组织部、市委组织部", "抄送：", "各片组。", "发：", "协会会员",
        "杭州市“两新”党务工作者协会秘书处", "二〇一五年十一月二十四日印发", "（共印 60 份）",
    ]
    check = run("issue", "check", str(sample)).stdout
    assert "  杭州市“两新”党务工作者协会秘书处　二〇一五年十一月二十四日印发\n" in check
    assert "  （共印 60 份）\n" in check


def test_an_issue_without_an_end_block_gets_one_from_the_lists(
    run: Run, initialised: Path, sample: Path, tmp_path: Path
) -> None:
    with_end(sample, "")
    out = tmp_path / "d"
    result = run("render", str(sample), "--out", str(out))
    assert result.stderr == ("warning: the issue has no end block; its lines are printed "
                             "from the lists: 发：协会会员\n")
    run("recipients", "import", str(REPO / "recipients" / "report-to.csv"), "--list",
        "report-to")
    run("render", str(sample), "--out", str(out))
    text = (out / "issue.txt").read_text(encoding="utf-8")
    block = [ln.strip() for ln in text.split("=" * 72 + "\n")[2].splitlines()]
    assert "".join(block[:-1]) == ("报：省委组织部，省委“两新”工委，市委组织部，市委“两新”工委，"
                                   "各区、县（市）委组织部，各区、县（市）委“两新”工委，张仲灿")
    assert block[-1] == "发：协会会员"


def test_no_end_block_and_nothing_on_the_lists_prints_no_empty_block(
    run: Run, config_file: Path, sample: Path, tmp_path: Path
) -> None:
    config_file.write_text(config_file.read_text(encoding="utf-8").replace(
        'collective_label = "协会会员"\n', ""), encoding="utf-8")
    run("init")
    with_end(sample, "")
    out = tmp_path / "d"
    result = run("render", str(sample), "--out", str(out))
    assert "no end block" in result.stderr and "goes out without one" in result.stderr
    text = (out / "issue.txt").read_text(encoding="utf-8")
    assert text.count("=" * 72) == 1  # the masthead's rule only
    assert 'class="endt"' not in (out / "issue.html").read_text(encoding="utf-8")


def coverage(result: Result) -> list[str]:
    """The coverage warnings of `issue check` (not its punctuation report)."""
    return [ln for ln in result.stderr.splitlines() if "half-width" not in ln]


def test_check_reports_coverage_given_the_database(
    run: Run, config_file: Path, sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a database (or without a config) the file alone is checked.
    assert coverage(run("issue", "check", str(sample))) == []
    monkeypatch.chdir(sample.parent)
    monkeypatch.delenv("MAILER_CONFIG", raising=False)
    alone = CliRunner().invoke(cli, ["issue", "check", str(sample)])
    assert alone.exit_code == 0 and coverage(alone) == [], alone.output

    run("init")
    for slug in ("report-to", "send-to"):
        run("recipients", "import", str(REPO / "recipients" / f"{slug}.csv"), "--list", slug)
    assert coverage(run("issue", "check", str(sample))) == []  # every body has an address
    run("recipients", "remove", "zhangzhongcan@example.org", "--list", "report-to")
    run("recipients", "add", "office@shengzf.example.org", "--list", "report-to",
        "--unit", "省政府办公厅", "--create-unit")
    result = run("issue", "check", str(sample))
    assert coverage(result) == [
        f"{sample.name}: warning: 张仲灿: no address on report-to; they will not receive it",
        f"{sample.name}: warning: report-to: the 报： line does not name 1 unit on the list "
        "(省政府办公厅); they receive it all the same",
    ]
    assert result.stdout.rstrip().endswith("ok")  # coverage never refuses an issue


def test_a_collective_label_covers_the_list_and_its_absence_is_reported(
    run: Run, initialised: Path, sample: Path
) -> None:
    run("recipients", "import", str(REPO / "recipients" / "send-to.csv"), "--list", "send-to")
    run("recipients", "import", str(REPO / "recipients" / "report-to.csv"), "--list",
        "report-to")
    assert coverage(run("issue", "check", str(sample))) == []  # 发：协会会员 covers send-to
    text = sample.read_text(encoding="utf-8").replace("发：协会会员", "发：万华集团、娃哈哈集团")
    sample.write_text(text, encoding="utf-8")
    [warning] = coverage(run("issue", "check", str(sample)))
    assert warning.startswith(f"{sample.name}: warning: send-to: the 发： line does not name "
                              "10 units on the list (祐康集团、")
    assert warning.endswith("and 5 more); they receive it all the same; write 协会会员 on it "
                            "to cover the whole list")
    # 报送 speaks of report-to as 报 does.
    sample.write_text(text.replace("\n报：", "\n报送："), encoding="utf-8")
    assert len(coverage(run("issue", "check", str(sample)))) == 1


# --- punctuation (GB/T 15834) ------------------------------------------------------


def test_check_reports_half_width_punctuation_and_changes_nothing(
    run: Run, sample: Path
) -> None:
    before = sample.read_bytes()
    result = run("issue", "check", str(sample))
    report = [ln for ln in result.stderr.splitlines() if "half-width" in ln]
    assert report[0] == (f"{sample.name}: line 18: half-width punctuation between Chinese "
                         "characters: ',' (GB/T 15834 writes ，)")
    found = check_punctuation(sample)
    assert report[:-1] == [f"{sample.name}: {f}" for f in found]
    counted = sum(sum(f.counts.values()) for f in found)
    assert counted > len(found) > 5
    assert report[-1] == (f"{sample.name}: {counted} half-width marks on "
                          f"{len(report) - 1} lines; `mailer issue convert {sample} "
                          "--fix-punctuation` writes them full-width")
    assert result.stdout.rstrip().endswith("ok")  # a warning, not an error
    assert sample.read_bytes() == before


def test_convert_fixes_punctuation_only_when_asked(run: Run, sample: Path) -> None:
    kept = sample.parent / "kept.md"
    run("issue", "convert", str(sample), "-o", str(kept))
    assert "责任制,发挥" in kept.read_text(encoding="utf-8")

    fixed = sample.parent / "fixed.md"
    out = run("issue", "convert", str(sample), "-o", str(fixed), "--fix-punctuation").stdout
    m = re.fullmatch(rf"wrote {re.escape(str(fixed))} \((\d+) punctuation marks made "
                     r"full-width\)\n", out)
    assert m is not None, out
    n = int(m[1])
    report = run("issue", "check", str(sample)).stderr
    assert f": {n} half-width marks on " in report
    text = fixed.read_text(encoding="utf-8")
    assert "责任制，发挥" in text and "责任制,发挥" not in text
    check = run("issue", "check", str(fixed))
    assert "half-width" not in check.stderr
    assert len(articles(check.stdout)) == 5
