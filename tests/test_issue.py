"""Parsing issue sources: the real 2015-09 sample, small plain-text variants, Markdown."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from pathlib import Path

import pytest

from mailer.errors import IssueError
from mailer.issue import (
    ParseResult,
    Problem,
    is_safe_href,
    parse_file,
    parse_markdown,
    parse_text,
    split_names,
    to_markdown,
)
from mailer.issue.punctuation import check_source, fix_issue, fix_text
from mailer.models import (
    Article,
    Block,
    BlockKind,
    EndBlock,
    EndKind,
    EndLine,
    Issue,
    Masthead,
    Span,
)
from mailer.numerals import number_value

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "bulletin-2015-09.txt"  # the real issue, unedited (test_the_sample_is_unedited)


@pytest.fixture(scope="module")
def sample() -> ParseResult:
    return parse_file(SAMPLE)


def paragraphs(issue: Issue) -> list[Block]:
    return [b for a in issue.articles for b in a.blocks if b.kind is BlockKind.PARAGRAPH]


def block_starting(issue: Issue, start: str) -> Block:
    found = [b for a in issue.articles for b in a.blocks if b.text.startswith(start)]
    assert len(found) == 1, f"{len(found)} blocks start with {start!r}"
    return found[0]


def plain(
    *,
    issue_line: str = "2015 年第 9 期 总第 33 期",
    date: str = "2015 年 11 月 24 日",
    header: str = "【本期导读】",
    contents: str = "- 1、第一篇文章。",
    body: str = "☆第一篇文章。\n\n正文第一段。",
    end: str = "报：市委组织部\n\n发：协会会员",
) -> str:
    """A small plain-text issue laid out like the sample (line numbers matter)."""
    return (
        "内部刊物\n注意保存\n\n杭州市新经济与新社会组织党务工作者协会\n\n简 报\n\n"  # lines 1-7
        f"{issue_line}\n\n杭州市“两新”党务工作者协会编印\n\n{date}\n\n"  # lines 8-12
        f"{header}\n\n{contents}\n\n{body}\n\n{end}\n"  # header: line 14, contents: 16
    )


# --- the real sample ------------------------------------------------------------


def test_sample_parses_without_any_problem(sample: ParseResult) -> None:
    assert sample.problems == ()
    assert sample.ok


def test_sample_masthead(sample: ParseResult) -> None:
    assert sample.issue.masthead == Masthead(
        notice="内部刊物 注意保存",
        organisation="杭州市新经济与新社会组织党务工作者协会",
        title="简 报",
        year=2015,
        number=9,
        total_number=33,
        publisher="杭州市“两新”党务工作者协会编印",
        date=dt.date(2015, 11, 24),
    )
    assert sample.issue.send_at is None


def test_sample_has_five_articles_matching_the_contents(sample: ParseResult) -> None:
    issue = sample.issue
    assert issue.contents == (
        "万向职院落实党建工作责任制,发挥政治核心作用。",
        "新世纪经贸学院党建工作:全覆盖、常态化、接地气。",
        "西子集团党建:以干部党员为带头先锋,搭建党员先锋智库平台。",
        "协会动态之一:协会组织开展 2015 年课题调研。",
        "协会动态之二:“小创意发挥大作用”两新组织党建案例大赛顺利举办。",
    )
    # Titles are kept as written (full-width ：， where the article has them).
    assert [a.title for a in issue.articles] == [
        "万向职院落实党建工作责任制,发挥政治核心作用。",
        "新世纪经贸学院党建工作：全覆盖、常态化、接地气。",
        "西子集团党建：以干部党员为带头先锋，搭建党员先锋智库平台。",
        "协会动态之一：协会组织开展 2015 年课题调研。",
        "协会动态之二：“小创意发挥大作用”两新组织党建案例大赛顺利举办。",
    ]
    assert [a.line for a in issue.articles] == [24, 54, 70, 96, 104]


JOINS = [
    ("《学生党员目标管理责任书》,新", "发展的党员根据发展时间"),
    ("重新进行整", "合，分成“新环境新起点"),
    ("凝聚力和向心力进一步", "增强，真正起到了领导核心作用"),
    ("容易产生心理异", "常，导致思想情绪波动"),
    ("理论探索经验，市两", "新组织党务工作者协会在前期"),
    ("市两新组织党务工作者", "协会承办。"),
]


@pytest.mark.parametrize(("before", "after"), JOINS)
def test_sample_page_break_cuts_are_joined(sample: ParseResult, before: str, after: str) -> None:
    texts = [b.text for b in paragraphs(sample.issue)]
    assert sum(before + after in t for t in texts) == 1
    assert not any(t.startswith(after) for t in texts)


def test_sample_has_exactly_six_joins(sample: ParseResult) -> None:
    paras = paragraphs(sample.issue)
    # 31 paragraph lines in the source, six of them second halves of a cut.
    assert len(paras) == 25
    assert sum(len(a.blocks) for a in sample.issue.articles) == 35
    assert [a.section_count for a in sample.issue.articles] == [4, 3, 3, 0, 0]
    assert [b.line for b in paras if "2.加强学生党员" in b.text] == [32]
    lines = {b.line for b in paras}
    assert not lines & {34, 52, 78, 92, 100, 108}  # where the second halves start


def test_sample_headings_without_punctuation_stay_headings(sample: ParseResult) -> None:
    blocks = sample.issue.articles[0].blocks
    assert blocks[1] == Block(BlockKind.SECTION, (Span("一、以目标管理为手段,落实党建工作责任制"),))
    assert blocks[2].text.startswith("1.明确党群工作年度工作目标。")
    article2 = sample.issue.articles[1].blocks
    assert [b.text for b in article2 if b.kind is BlockKind.SECTION] == [
        "一、力求“全覆盖”",
        "二、突出“常态化”",
        "三、重在“接地气”",
    ]
    assert article2[2].text.startswith("“全覆盖”是指")


def test_sample_paragraphs_that_are_not_cut_stay_apart(sample: ParseResult) -> None:
    issue = sample.issue
    assert block_starting(issue, "坚持“走出去、请进来”").line == 84
    assert block_starting(issue, "1、成立党员先锋智库").text.endswith("几十种型号非标装置。")
    assert block_starting(issue, "2、建立“党群聊吧”阵地").text.endswith("工作效率提高了。")
    assert block_starting(issue, "3、组织党员开展系列活动").line == 94
    assert block_starting(issue, "1. 创新党建载体").kind is BlockKind.PARAGRAPH


def test_sample_bold_runs(sample: ParseResult) -> None:
    block = block_starting(sample.issue, "以“四好领导班子”建设为目标")
    assert Span("三是", bold=True) in block.spans
    assert Span("四是", bold=True) in block.spans
    assert block.spans[0] == Span(block.spans[0].text)
    assert "增强，真正起到了领导核心作用" in block.spans[0].text
    assert not any("*" in b.text for b in paragraphs(sample.issue))
    bold = [s.text for b in paragraphs(sample.issue) for s in b.spans if s.bold]
    assert bold == ["三是", "四是", "一是", "二是", "三是"]


def test_sample_end_block(sample: ParseResult) -> None:
    end = sample.issue.end
    report = end.line("报")
    assert report is not None
    assert report.names == (
        "省委组织部",
        "省委“两新”工委",
        "市委组织部",
        "市委“两新”工委",
        "各区、县（市）委组织部",
        "各区、县（市）委“两新”工委",
        "张仲灿",
    )
    assert report.text.startswith("省委组织部、省委“两新”工委，")
    assert end.line("发") == EndLine("发", "协会会员", ("协会会员",))
    assert [ln.label for ln in end.lines] == ["报", "发"]
    assert end.copies is None
    # The end block is not article text.
    assert not any("协会会员" in b.text for b in sample.issue.articles[-1].blocks)


def test_sample_block_lines(sample: ParseResult) -> None:
    blocks = sample.issue.articles[2].blocks
    assert [b.line for b in blocks] == [72, 74, 76, 80, 82, 84, 86, 88, 90, 94]


# --- plain-text variants --------------------------------------------------------


@pytest.mark.parametrize(
    ("issue_line", "year", "number", "total"),
    [
        ("2015 年第 9 期 总第 33 期", 2015, 9, 33),
        ("2015年第9期总第33期", 2015, 9, 33),
        ("2015年第9期（总第33期）", 2015, 9, 33),
        ("2015年第9期(总第33期)", 2015, 9, 33),
        ("2016 年第 12 期 （总第 100 期）", 2016, 12, 100),
        ("2015年第9期", 2015, 9, None),
        ("２０１５年第９期", 2015, 9, None),
        ("2015年第九期", 2015, 9, None),
        ("2015 年第九期 总第三十三期", 2015, 9, 33),
        ("二〇一五年第十二期（总第一百零五期）", 2015, 12, 105),
        ("二○一六年第十期(总第一百二十期)", 2016, 10, 120),
        ("二零一六年第廿一期 总第两百期", 2016, 21, 200),
    ],
)
def test_issue_line_variants(issue_line: str, year: int, number: int, total: int | None) -> None:
    result = parse_text(plain(issue_line=issue_line))
    m = result.issue.masthead
    assert (m.year, m.number, m.total_number) == (year, number, total)
    assert result.problems == ()


def test_date_without_spaces() -> None:
    assert parse_text(plain(date="2016年1月5日")).issue.masthead.date == dt.date(2016, 1, 5)


def test_missing_date_is_an_error() -> None:
    result = parse_text(plain(date=""))
    assert result.issue.masthead.date is None
    assert not result.ok
    assert [p.severity for p in result.problems] == ["error"]
    assert "date" in result.problems[0].message


def test_impossible_date_is_an_error_on_its_line() -> None:
    result = parse_text(plain(date="2015 年 2 月 30 日"))
    assert result.errors == (Problem(12, "'2015 年 2 月 30 日' is not a valid date", "error"),)


@pytest.mark.parametrize(
    ("written", "date"),
    [
        ("二〇一五年十一月二十四日", dt.date(2015, 11, 24)),
        ("二○一五年十一月二十四日", dt.date(2015, 11, 24)),  # ○ (U+25CB), as typed
        ("二零一五年十一月二十四日", dt.date(2015, 11, 24)),
        ("二〇一五年十一月廿四日", dt.date(2015, 11, 24)),
        ("二〇一六年一月五日", dt.date(2016, 1, 5)),
        ("二〇一六年十月十日", dt.date(2016, 10, 10)),
        ("二〇一六年十二月卅一日", dt.date(2016, 12, 31)),
        ("二〇一六年三月三十日", dt.date(2016, 3, 30)),
        ("2016 年 三 月 二十 日", dt.date(2016, 3, 20)),
    ],
)
def test_dates_in_chinese_numerals(written: str, date: dt.date) -> None:
    result = parse_text(plain(date=written))
    assert result.issue.masthead.date == date
    assert result.problems == ()


@pytest.mark.parametrize(
    "written", ["二〇一五年十三月二十四日", "二〇一五年二月三十日", "二〇一五年二三月一日"]
)
def test_a_date_that_cannot_be_read_is_an_error_at_its_own_line(written: str) -> None:
    """The error pointed at the issue-number line instead of the date's."""
    result = parse_text(plain(date=written))
    [error] = result.errors
    assert error.line == 12 and repr(written) in error.message
    assert result.issue.masthead.publisher == "杭州市“两新”党务工作者协会编印"


def test_a_date_in_words_gets_the_hint() -> None:
    result = parse_text(plain(date="二〇一五年某月某日"))
    [error] = result.errors
    assert error.line == 12
    assert error.message.endswith("write it as 2015 年 11 月 24 日 (or 二〇一五年十一月二十四日)")


def test_an_issue_number_that_cannot_be_read_is_an_error_at_its_line() -> None:
    result = parse_text(plain(issue_line="2015年第九九十期 总第三十三期"))
    [error] = result.errors
    assert error.line == 8 and "'九九十'" in error.message and "第九期" in error.message
    with pytest.raises(IssueError, match=r"^line 8: '2015年第9期总第33页' is not an issue line"):
        parse_text(plain(issue_line="2015年第9期总第33页"))


@pytest.mark.parametrize(
    ("text", "value"),
    [("9", 9), ("９", 9), ("九", 9), ("十", 10), ("十一", 11), ("二十四", 24), ("廿四", 24),
     ("卅一", 31), ("三十三", 33), ("一百", 100), ("一百零五", 105), ("一百二十", 120),
     ("两百", 200), ("二〇一五", 2015), ("二○一五", 2015), ("一千零一", 1001),
     ("二三", 23), ("二三十", None), ("十十", None), ("百十", 110), ("", None), ("x", None)],
)
def test_number_value(text: str, value: int | None) -> None:
    assert number_value(text) == value


def test_no_issue_line_raises() -> None:
    with pytest.raises(IssueError, match="no issue line"):
        parse_text("内部刊物\n\n简 报\n\n☆文章\n\n正文。\n")


def test_other_contents_header_and_black_star() -> None:
    result = parse_text(plain(header="【本期要目】", body="★第一篇文章。\n\n正文第一段。"))
    assert result.problems == ()
    assert result.issue.contents == ("第一篇文章。",)
    assert [a.title for a in result.issue.articles] == ["第一篇文章。"]


def test_full_width_indentation_is_stripped() -> None:
    body = "☆第一篇文章。\n\n\u3000\u3000正文第一段，　全角空格留在中间。\n\n\u3000\u3000一、标题"
    result = parse_text(plain(body=body))
    blocks = result.issue.articles[0].blocks
    assert blocks[0].text == "正文第一段，　全角空格留在中间。"
    assert blocks[1] == Block(BlockKind.SECTION, (Span("一、标题"),))


def test_punctuation_is_kept_as_written() -> None:
    body = "☆第一篇文章。\n\n半角,逗号与全角，逗号:都保留。"
    text = parse_text(plain(body=body)).issue.articles[0].blocks[0].text
    assert text == "半角,逗号与全角，逗号:都保留。"


def test_contents_entry_without_article_is_an_error_with_its_line() -> None:
    contents = "- 1、第一篇文章。\n- 2、不存在的文章。"
    result = parse_text(plain(contents=contents))
    assert result.errors == (
        Problem(17, "contents entry 2 '不存在的文章。' matches no article", "error"),
    )


def test_article_missing_from_contents_is_a_warning() -> None:
    body = "☆第一篇文章。\n\n正文。\n\n☆第二篇文章\n\n正文。"
    result = parse_text(plain(body=body))
    assert result.ok
    assert result.warnings == (
        Problem(22, "article '第二篇文章' is not in the contents (本期导读)", "warning"),
    )


def test_contents_match_ignores_punctuation_width_and_spaces() -> None:
    contents = "- 1、协会动态：协会组织开展2015年课题调研\n- 2、西子集团党建,搭建平台。"
    body = (
        "☆协会动态:协会组织开展 2015 年课题调研。\n\n正文。\n\n☆西子集团党建，搭建平台。\n\n正文。"
    )
    assert parse_text(plain(contents=contents, body=body)).problems == ()


def test_links_only_https_and_mailto_are_kept() -> None:
    body = (
        "☆第一篇文章。\n\n"
        "见[官网](https://example.org/a)和[邮件](mailto:a@example.org)。\n\n"
        "点[这里](javascript:alert(1))或[那里](http://example.org/)。"
    )
    result = parse_text(plain(body=body))
    first, second = result.issue.articles[0].blocks
    assert first.spans == (
        Span("见"),
        Span("官网", href="https://example.org/a"),
        Span("和"),
        Span("邮件", href="mailto:a@example.org"),
        Span("。"),
    )
    assert second.spans == (Span("点这里或那里。"),)
    assert [(p.line, p.severity) for p in result.problems] == [(22, "warning"), (22, "warning")]
    assert "javascript:alert(1)" in result.problems[0].message
    assert "http://example.org/" in result.problems[1].message


def test_script_tag_stays_text() -> None:
    body = "☆第一篇文章。\n\n正文<script>alert(1)</script>结束。"
    result = parse_text(plain(body=body))
    assert result.issue.articles[0].blocks[0].spans == (
        Span("正文<script>alert(1)</script>结束。"),
    )


def test_unknown_heading_like_line_is_a_warning_and_not_joined() -> None:
    body = "☆第一篇文章。\n\n典型经验\n\n某公司建立了制度。"
    result = parse_text(plain(body=body))
    assert [b.text for b in result.issue.articles[0].blocks] == ["典型经验", "某公司建立了制度。"]
    assert [(p.line, p.severity) for p in result.problems] == [(20, "warning")]
    assert "'典型经验'" in result.problems[0].message


def test_numbered_heading_like_line_is_not_joined() -> None:
    body = (
        "☆第一篇文章。\n\n1.加强组织建设\n\n"
        "以“四好领导班子”建设为目标，从班子建设、理论学习等方面多管齐下。"
    )
    result = parse_text(plain(body=body))
    texts = [b.text for b in result.issue.articles[0].blocks]
    assert texts == [
        "1.加强组织建设",
        "以“四好领导班子”建设为目标，从班子建设、理论学习等方面多管齐下。",
    ]
    assert result.problems == ()


def test_cut_before_punctuation_is_joined_even_after_a_short_line() -> None:
    body = "☆第一篇文章。\n\n根据工作要求\n\n，协会开展了调研。"
    blocks = parse_text(plain(body=body)).issue.articles[0].blocks
    assert [b.text for b in blocks] == ["根据工作要求，协会开展了调研。"]


def test_bold_across_a_page_break_and_line_numbers_of_joined_paragraphs() -> None:
    body = (
        "☆第一篇文章。\n\n"
        "党委和支部两级班子的凝聚力和向心力进一步增强，真正起到了领导核心作用**三\n\n"
        "是**加强学习。"
    )
    block = parse_text(plain(body=body)).issue.articles[0].blocks[0]
    assert block.line == 20
    assert block.spans[1:] == (Span("三是", bold=True), Span("加强学习。"))


def test_run_in_section_is_kept_as_paragraph_with_warning() -> None:
    body = "☆第一篇文章。\n\n（一）加强组织建设。以目标为抓手，全面加强组织建设。"
    result = parse_text(plain(body=body))
    assert result.issue.articles[0].blocks[0].kind is BlockKind.PARAGRAPH
    assert [(p.line, p.severity) for p in result.problems] == [(20, "warning")]


def test_subsection() -> None:
    body = "☆第一篇文章。\n\n一、标题\n\n（一）小标题\n\n正文。"
    kinds = [b.kind for b in parse_text(plain(body=body)).issue.articles[0].blocks]
    assert kinds == [BlockKind.SECTION, BlockKind.SUBSECTION, BlockKind.PARAGRAPH]


def test_end_block_variants() -> None:
    end = "报：省委组织部，市委组织部\n送:市委宣传部\n抄送：各片组\n发：协会会员    共印 50 份"
    result = parse_text(plain(end=end))
    assert result.issue.end == EndBlock(
        (
            EndLine("报", "省委组织部，市委组织部", ("省委组织部", "市委组织部")),
            EndLine("送", "市委宣传部", ("市委宣传部",)),
            EndLine("抄送", "各片组", ("各片组",)),
            EndLine("发", "协会会员", ("协会会员",)),
            EndLine("共印", "共印 50 份", kind=EndKind.COPIES),
        ),
        copies=50,
    )
    assert result.problems == ()


@pytest.mark.parametrize("label", ["报", "报送", "送", "抄报", "抄送", "主送", "发"])
@pytest.mark.parametrize("colon", ["：", ":", " ： "])
def test_every_end_block_label(label: str, colon: str) -> None:
    """报送： was not a label: the line became a paragraph of the last article."""
    text = "省委组织部、市委组织部，张仲灿"
    result = parse_text(plain(end=f"{label}{colon}{text}"))
    assert result.issue.end.lines == (
        EndLine(label, text, ("省委组织部", "市委组织部", "张仲灿")),
    )
    assert result.issue.articles[-1].blocks[-1].text == "正文第一段。"
    assert result.problems == ()


def test_spaced_out_label_is_read_as_the_label() -> None:
    result = parse_text(plain(end="抄　送：各片组\n主 送：各会员单位"))
    assert [(ln.label, ln.text) for ln in result.issue.end.lines] == [
        ("抄送", "各片组"), ("主送", "各会员单位"),
    ]


def test_end_block_keeps_every_line_as_written_in_order() -> None:
    """The 印发 line and the copies line were dropped or moved to the end."""
    end = (
        "主送：各会员单位\n\n报送：省委组织部、市委组织部\n\n抄报：省委“两新”工委\n\n"
        "抄送：各片组，张仲灿。\n\n"
        "杭州市“两新”党务工作者协会秘书处　　二〇一五年十一月二十四日印发\n\n"
        "（共印五十份）"
    )
    result = parse_text(plain(end=end))
    assert result.problems == ()
    lines = result.issue.end.lines
    assert [ln.label for ln in lines] == ["主送", "报送", "抄报", "抄送", "印发", "共印"]
    assert lines[3].text == ["抄送", "各片组，张仲灿。"][1]  # punctuation kept
    assert lines[3].names == ("各片组", "张仲灿")
    assert lines[4] == EndLine("印发", "杭州市“两新”党务工作者协会秘书处", kind=EndKind.ISSUED,
                               date="二〇一五年十一月二十四日")
    assert lines[4].written == "杭州市“两新”党务工作者协会秘书处　二〇一五年十一月二十四日印发"
    assert lines[5] == EndLine("共印", "（共印五十份）", kind=EndKind.COPIES)
    assert result.issue.end.copies == 50
    # Written to Markdown and read back: the same lines.
    back = parse_markdown(to_markdown(result.issue))
    assert back.issue.end == result.issue.end
    assert back.problems == ()


def test_issued_line_without_a_date_and_copies_in_the_middle() -> None:
    end = "报：市委组织部\n共印 30 份\n发：协会会员\n协会秘书处印发"
    result = parse_text(plain(end=end))
    assert [ln.written for ln in result.issue.end.lines] == [
        "报：市委组织部", "共印 30 份", "发：协会会员", "协会秘书处印发",
    ]
    assert result.issue.end.copies == 30


def test_a_block_made_with_only_a_count_prints_the_copies_line() -> None:
    """A block built from the lists (or by another source) carries only the count."""
    block = EndBlock((EndLine("发", "协会会员", ("协会会员",)),), copies=40)
    assert block.lines[-1] == EndLine("共印", "（共印 40 份）", kind=EndKind.COPIES)
    assert block == EndBlock((*block.lines,))
    assert block.line("发") is not None and block.named == block.lines[:1]


def test_wrapped_end_line_and_separate_copies_line() -> None:
    end = "报：省委组织部、市委组织部、\n各区、县（市）委组织部\n\n发：协会会员\n\n（共印 40 份）"
    result = parse_text(plain(end=end))
    report = result.issue.end.line("报")
    assert report is not None
    assert report.names == ("省委组织部", "市委组织部", "各区、县（市）委组织部")
    assert result.issue.end.copies == 40


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("各区、县（市）、乡镇党委，市委组织部", ("各区、县（市）、乡镇党委", "市委组织部")),
        ("市、区两级组织部；张三", ("市、区两级组织部", "张三")),
        ("省委“两新、非公”工委、余杭区委组织部", ("省委“两新、非公”工委", "余杭区委组织部")),
        ("协会会员。", ("协会会员",)),
        ("甲单位　乙单位", ("甲单位", "乙单位")),
    ],
)
def test_split_names(text: str, names: tuple[str, ...]) -> None:
    assert split_names(text) == names


# --- links ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("https://example.org/x?a=1", True),
        ("HTTPS://example.org", True),
        ("mailto:office@example.org", True),
        ("http://example.org", False),
        ("javascript:alert(1)", False),
        ("JavaScript:alert(1)", False),
        ("data:text/html,<script>", False),
        ("https://", False),
        ("mailto:", False),
        (" https://example.org", False),
        ("https://exa mple.org", False),
        ("//example.org", False),
        ("", False),
        # Where the parser's and the renderer's copies of the rule disagreed, or both
        # let a trick through: the one rule now refuses all of these.
        ("https://example.org ", False),  # the renderer stripped and kept it
        ("https://:443/", False),  # a port but no host: the renderer kept it
        ("https://exa\x7fmple.org", False),  # DEL: the parser kept it
        ("https://[::1", False),  # the renderer raised ValueError
        ("https://example.org:port/", False),
        ("https://\u200bexample.org", False),  # an invisible character
        ("https://example.org/\u202eexe.txt", False),  # right-to-left override
        ("https://example.org/\u4e2d", False),  # unencoded: parsers percent-encode it
        ("https://bank.example@evil.example/", False),  # goes to evil.example
        ("https:\\\\evil.example", False),
        ("mailto:javascript:alert(1)", False),  # both copies kept it
        ("mailto:office", False),
        ("mailto:a@example.org%0Abcc:b@example.org", False),
        ("mailto:?to=a@example.org", False),
        ("Mailto:a@example.org,b@example.org?subject=%E7%AE%80%E6%8A%A5", True),
        ("https://xn--fsqu00a.xn--fiqs8s/%E8%B7%AF", True),
        ("https://example.org:8443/a#b", True),
        (None, False),
    ],
)
def test_is_safe_href(url: str | None, safe: bool) -> None:
    assert is_safe_href(url) is safe


# One link of each kind, as staff might write them; the same in .txt and .md.
LINKS = {
    "https://example.org/a?b=1": True,
    "HTTPS://example.org/b": True,
    "mailto:office@example.org": True,
    "http://example.org/": False,
    "javascript:alert(1)": False,
    "JavaScript:alert(1)": False,
    "data:text/html,x": False,
    "vbscript:msgbox(1)": False,
    "a/relative.html": False,
    "/rooted": False,
    "//example.org/": False,
    "https:///no-host": False,
    "https://bank.example@evil.example/": False,
    "mailto:javascript:alert(1)": False,
}


def test_text_and_markdown_keep_and_refuse_the_same_links(tmp_path: Path) -> None:
    """Both parsers ask one rule: the same spans, the same warnings, word for word."""
    line = "".join(f"[链{n}]({url})、" for n, url in enumerate(LINKS)) + "完。"
    txt = tmp_path / "issue.txt"
    txt.write_text(plain(body=f"☆第一篇文章。\n\n{line}"), encoding="utf-8")
    md = tmp_path / "issue.md"
    md.write_text(f"+++\n{FRONT}+++\n\n## 第一篇文章。\n\n{line}\n", encoding="utf-8")
    results = [parse_file(txt), parse_file(md)]
    spans = [r.issue.articles[0].blocks[0].spans for r in results]
    assert spans[0] == spans[1]
    kept = {sp.text: sp.href for sp in spans[0] if sp.href is not None}
    assert kept == {
        f"链{n}": url for n, (url, safe) in enumerate(LINKS.items())
        if safe
    }
    warnings = [[p.message for p in r.warnings if "link" in p.message] for r in results]
    assert warnings[0] == warnings[1]
    refused = [url for url, safe in LINKS.items() if not safe]
    assert len(warnings[0]) == len(refused)
    for url, message in zip(refused, warnings[0], strict=True):
        assert message.startswith(f"link to {url!r} dropped, only https: and mailto:"), message
        assert f"its text '链{list(LINKS).index(url)}' is kept" in message, message
    assert [p.line for p in results[0].warnings if "link" in p.message] == [20] * len(refused)
    assert [p.line for p in results[1].warnings if "link" in p.message] == [13] * len(refused)


# --- Markdown -------------------------------------------------------------------


def test_sample_markdown_round_trip(sample: ParseResult) -> None:
    md = to_markdown(sample.issue)
    back = parse_markdown(md)
    assert back.problems == ()
    assert back.issue == sample.issue
    assert "\n### 一、以目标管理为手段,落实党建工作责任制\n" in md
    assert "\n1. 创新党建载体，服务教书育人。" in md  # no backslash for staff to stumble on
    assert "**三是**" in md
    assert md.endswith(
        "---\n\n报：省委组织部、省委“两新”工委，市委组织部、市委“两新”工委，"
        "各区、县（市）委组织部、各区、县（市）委“两新”工委、张仲灿\n\n发：协会会员\n"
    )


def test_handwritten_markdown() -> None:
    result = parse_file(DATA / "handwritten.md")
    assert result.problems == ()
    issue = result.issue
    assert issue.masthead.year == 2016 and issue.masthead.total_number == 34
    assert issue.masthead.date == dt.date(2016, 1, 20)
    assert issue.send_at == dt.datetime(2016, 1, 21, 1, 30, tzinfo=dt.UTC)
    assert issue.contents == ("协会召开年会。", "会员单位“党群聊吧”经验交流")
    first, second = issue.articles
    assert (first.title, first.line, second.line) == ("协会召开年会", 21, 34)
    assert first.blocks[0].spans == (
        Span("1月15日，协会召开"),
        Span("2016 年年会", bold=True),
        Span("，会长作工作报告。详见"),
        Span("协会网站", href="https://example.org/news/2016(1)"),
        Span("。"),
    )
    assert [(b.kind, b.text, b.line) for b in first.blocks[1:5]] == [
        (BlockKind.SECTION, "一、回顾 2015 年工作", 25),
        (BlockKind.PARAGRAPH, "1. 课题调研完成 8 篇文章。", 27),
        (BlockKind.PARAGRAPH, "2. 党建案例大赛共收到 106 个案例。", 28),
        (BlockKind.SUBSECTION, "（一）存在的不足", 30),
    ]
    # **“…”** next to Chinese text is bold here, although CommonMark alone would not
    # open it; a soft line break inside Chinese text joins without a space.
    assert second.blocks[0].spans == (
        Span("西子集团介绍了"),
        Span("“党群聊吧”", bold=True),
        Span("阵地建设的做法，与会人员进行了交流。"),
    )
    # report_to / send_to in the front matter replace the 报/发 lines of the body.
    assert issue.end == EndBlock(
        (
            EndLine("报", "省委组织部、市委组织部", ("省委组织部", "市委组织部")),
            EndLine("发", "各会员单位", ("各会员单位",)),
            EndLine("共印", "共印 60 份", kind=EndKind.COPIES),  # as written
        ),
        copies=60,
    )
    assert parse_markdown(to_markdown(issue)).issue == issue


B = True


@pytest.mark.parametrize(
    ("source", "spans"),
    [
        ("工作**“两新”**党建。", (("工作", 0), ("“两新”", B), ("党建。", 0))),
        ("**一**二**三**。", (("一", B), ("二", 0), ("三", B), ("。", 0))),
        ("** 不是粗体**。", (("** 不是粗体**。", 0),)),
        ("**甲*乙**。", (("甲*乙", B), ("。", 0))),
        ("**[链](https://example.org)**。", (("链", B), ("。", 0))),
        # Where the plain-text parser's own pairing disagreed with Markdown's:
        ("**甲 **乙**。", (("**甲 ", 0), ("乙", B), ("。", 0))),  # was bold "甲 **乙"
        ("*** 甲**。", (("*** 甲**。", 0),)),  # was bold "* 甲"
        ("**甲****乙**。", (("甲****乙", B), ("。", 0))),  # was bold "甲乙"
    ],
)
def test_text_and_markdown_make_the_same_runs_bold(
    source: str, spans: tuple[tuple[str, bool], ...]
) -> None:
    """One rule for ``**…**``: markdown-it's pairing with ``_emphasis``, for both."""
    text = parse_text(plain(body=f"☆第一篇文章。\n\n{source}")).issue
    md = parse_markdown(f"+++\n{FRONT}+++\n\n## 第一篇文章。\n\n{source}\n").issue
    got = text.articles[0].blocks[0].spans
    assert [(sp.text, sp.bold) for sp in got] == [(t, bool(b)) for t, b in spans]
    assert md.articles[0].blocks[0].spans == got


def test_plain_text_keeps_the_stars_markdown_reads_as_italic() -> None:
    text = parse_text(plain(body="☆第一篇文章。\n\n***重点***与*一般*。")).issue
    assert text.articles[0].blocks[0].spans == (
        Span("*"), Span("重点", bold=True), Span("*与*一般*。"),
    )


def test_markdown_local_send_at_and_no_total() -> None:
    issue = Issue(
        Masthead("", "协会", "简 报", 2020, 3, None, "协会编印", dt.date(2020, 3, 1)),
        (),
        (Article("文章", (Block(BlockKind.PARAGRAPH, (Span("正文。"),)),)),),
        EndBlock(),
        send_at=dt.datetime(2020, 3, 2, 8, 0),
    )
    md = to_markdown(issue)
    assert "total_number" not in md and "send_at = 2020-03-02T08:00:00\n" in md
    assert parse_markdown(md).issue == issue


def test_markdown_round_trip_of_awkward_text() -> None:
    spans = (
        Span("a*b_c [x](y) <b>&amp; \\ `code` "),
        Span("“两新”", bold=True),
        Span("后"),
        Span("链接（一）", href="https://example.org/a_(b)?q=1&r=2"),
        Span("#1", bold=True),
        Span("感叹!"),  # not an image: ![…](…)
        Span("链", href="mailto:a@example.org"),
        Span("粗", bold=True),
        Span("粗链", bold=True, href="https://example.org"),
        Span(" 仍粗", bold=True),
    )
    blocks = tuple(
        Block(BlockKind.PARAGRAPH, (Span(t),))
        for t in (
            "1. 以数字开头",
            "1) 也是",
            "- 横线",
            "# 井号",
            "> 引号",
            "+ 加号",
            "---",
            "2015.",
        )
    )
    issue = Issue(
        Masthead('带"引号"\\和\t制表', "协会", "简 报", 2020, 3, 7, "协会编印", None),
        ("1. 目录里的数字", "*星号*"),
        (
            Article("标题 #1 *星*", (Block(BlockKind.PARAGRAPH, spans), *blocks)),
            Article("1. 数字标题", (Block(BlockKind.SECTION, (Span("一、**不是粗体**"),)),)),
        ),
        EndBlock((EndLine("报", "a*b、各区、县（市）委", ("a*b", "各区、县（市）委")),), 5),
    )
    back = parse_markdown(to_markdown(issue))
    assert back.issue == issue
    assert [p.message for p in back.errors if "front matter" in p.message] == [
        "front matter has no 'date' (add a line such as date = 2026-12-01)"
    ]


def test_markdown_links_and_script() -> None:
    md = (
        '+++\nnotice = ""\norganisation = "协会"\ntitle = "简 报"\nyear = 2020\n'
        'number = 1\npublisher = "协会编印"\ndate = 2020-01-01\n+++\n\n'  # body from line 10
        "## 文章\n\n"
        "[坏](javascript:alert(1))、[旧](http://example.org)、[好](https://example.org)\n"
        "<script>alert(1)</script>\n"
    )
    result = parse_markdown(md)
    block = result.issue.articles[0].blocks[0]
    assert block.spans == (
        Span("坏、旧、"),
        Span("好", href="https://example.org"),
        Span("<script>alert(1)</script>"),
    )
    assert [(p.line, p.severity) for p in result.warnings if "link" in p.message] == [
        (13, "warning"),
        (13, "warning"),
    ]


def test_markdown_text_outside_articles_and_stray_end_lines() -> None:
    md = (
        '+++\nnotice = ""\norganisation = "协会"\ntitle = "简 报"\nyear = 2020\n'
        'number = 1\npublisher = "协会编印"\ndate = 2020-01-01\n+++\n'
        "开头的话。\n\n## 文章\n\n正文。\n\n报：市委组织部\n"
    )
    result = parse_markdown(md)
    assert result.errors[0].line == 10
    assert any(p.line == 16 and "end-block" in p.message for p in result.warnings)
    assert result.issue.end == EndBlock()


FRONT = (
    'notice = ""\norganisation = "协会"\ntitle = "简 报"\nyear = 2020\nnumber = 1\n'
    'publisher = "协会编印"\ndate = 2020-01-01\n'
)


def front_problems(front: str) -> ParseResult:
    return parse_markdown(f"+++\n{front}+++\n\n## 文章\n\n正文。\n")


@pytest.mark.parametrize(
    ("front", "line", "message"),
    [
        (FRONT.replace("year = 2020\n", ""), 0,
         "front matter has no 'year' (add a line such as year = 2026)"),
        (FRONT.replace("year = 2020", 'year = "2020"'), 5,
         'year: "2020" is not a whole number without quotes; write it as 2020'),
        (FRONT.replace("number = 1", "number = 0"), 6,
         "number: 0 is not a whole number without quotes; write it as 9"),
        (FRONT.replace("date = 2020-01-01", "date = 2020-01-01T08:00:00"), 8,
         "date: 2020-01-01T08:00:00 is not a date without quotes or time; write it as "
         "2020-01-01"),
        (FRONT.replace("date = 2020-01-01", 'date = "2020-01-01"'), 8,
         'date: "2020-01-01" is not a date without quotes or time; write it as 2020-01-01'),
        # Not TOML at all: what staff type. The rest of the front matter is still read.
        (FRONT.replace("date = 2020-01-01", "date = 2026/12/01"), 8,
         "date: 2026/12/01 is not a date without quotes or time; write it as 2026-12-01"),
        (FRONT.replace("date = 2020-01-01", "date = 2026年12月1日"), 8,
         "date: 2026年12月1日 is not a date without quotes or time; write it as 2026-12-01"),
        (FRONT + 'send_at = "tomorrow"\n', 9,
         'send_at: "tomorrow" is not a date and time without quotes; write it as '
         "2026-12-02 09:00"),
        (FRONT + "send_at = 2026/12/02 9:00\n", 9,
         "send_at: 2026/12/02 9:00 is not a date and time without quotes; write it as "
         "2026-12-02 09:00"),
        (FRONT + "report_to = 3\n", 9,
         "report_to: 3 is not text in double quotes; write it as \"省委组织部、市委组织部\""),
        (FRONT.replace('title = "简 报"', "title = 简 报"), 4,
         'title: 简 报 is not text in double quotes; write it as "简 报"'),
        (FRONT + 'title = "简报"\n', 9, "title: given twice (also on line 4); keep one"),
        (FRONT + "year 2020\n", 9,
         "'year 2020' is not a 'key = value' line; write e.g. title = \"简 报\" (or start it "
         "with # to keep it as a note)"),
        (FRONT + "totl_number = 34\n", 9,
         "unknown front matter key 'totl_number'; did you mean 'total_number'?"),
        (FRONT + "colour = 3\n", 9,
         "unknown front matter key 'colour'; the keys are notice, organisation, title, "
         "publisher, year, number, total_number, date, send_at, report_to, send_to"),
    ],
)
def test_front_matter_errors_say_key_what_and_how(front: str, line: int, message: str) -> None:
    """`date = 2026/12/01` got "not valid TOML: Expected newline or end of document…"."""
    result = front_problems(front)
    assert [(p.line, p.message) for p in result.errors] == [(line, message)]


def test_two_slips_in_the_front_matter_are_both_reported() -> None:
    front = FRONT.replace("date = 2020-01-01", "date = 2020.1.1").replace(
        "number = 1", "number = 一")
    result = front_problems(front)
    assert [(p.line, p.message.split(":")[0]) for p in result.errors] == [
        (6, "number"), (8, "date"),
    ]
    assert result.issue.masthead.title == "简 报"  # the rest is still read


def test_send_at_as_staff_are_told_to_write_it() -> None:
    for written in ("2026-12-02 09:00", "2026-12-02T09:00", "2026-12-02 09:00:00  # 上午"):
        result = front_problems(FRONT + f"send_at = {written}\n")
        assert result.ok and not [p for p in result.warnings if p.line]
        assert result.issue.send_at == dt.datetime(2026, 12, 2, 9, 0)
    zoned = front_problems(FRONT + "send_at = 2026-12-02 09:00+08:00\n").issue.send_at
    assert zoned == dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))


def test_a_year_that_disagrees_with_the_date_is_a_warning() -> None:
    result = front_problems(FRONT.replace("year = 2020", "year = 2025"))
    assert result.ok
    assert [(p.line, p.message) for p in result.warnings if p.line] == [
        (5, "year = 2025 but date = 2020-01-01: the issue line will read 2025 年; check "
            "which is right"),
    ]


def test_a_typo_in_a_key_is_an_error_not_a_lost_total() -> None:
    """`totl_number` was a warning, and the subject silently lost （总第34期）."""
    result = front_problems(FRONT + "totl_number = 34\n")
    assert not result.ok


def test_missing_front_matter_raises() -> None:
    with pytest.raises(IssueError, match="no front matter"):
        parse_markdown("## 文章\n\n正文。\n")
    with pytest.raises(IssueError, match="no closing"):
        parse_markdown("+++\nyear = 2020\n\n## 文章\n")


# --- files ----------------------------------------------------------------------


def test_gb18030_file_decodes(sample: ParseResult, tmp_path: Path) -> None:
    path = tmp_path / "issue.txt"
    path.write_bytes(SAMPLE.read_text(encoding="utf-8").encode("gb18030"))
    assert parse_file(path).issue == sample.issue


def test_bom_is_tolerated(sample: ParseResult, tmp_path: Path) -> None:
    path = tmp_path / "issue.txt"
    path.write_bytes(b"\xef\xbb\xbf" + SAMPLE.read_bytes())
    result = parse_file(path)
    assert result.issue == sample.issue
    assert result.issue.articles[0].line == 24


def test_markdown_file_with_bom(sample: ParseResult, tmp_path: Path) -> None:
    path = tmp_path / "issue.md"
    path.write_text("\ufeff" + to_markdown(sample.issue), encoding="utf-8")
    assert parse_file(path).issue == sample.issue


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030", "utf-16"])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_issue_file_encodings_and_line_endings(
    sample: ParseResult, tmp_path: Path, encoding: str, newline: str
) -> None:
    """What staff's editors save: mailer.charset decodes, the parser splits lines."""
    sources = {
        tmp_path / "issue.txt": SAMPLE.read_text(encoding="utf-8"),
        tmp_path / "issue.md": to_markdown(sample.issue),
    }
    for path, text in sources.items():
        path.write_bytes(text.replace("\n", newline).encode(encoding))
        assert parse_file(path).issue == sample.issue
    assert parse_file(tmp_path / "issue.txt").issue.articles[0].line == 24


def test_binary_issue_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "issue.txt"
    path.write_bytes("简 报\n".encode("utf-16-le"))  # UTF-16 without its BOM
    with pytest.raises(IssueError, match=r"issue\.txt: NUL bytes, so not a text file"):
        parse_file(path)


def test_unknown_suffix_raises(tmp_path: Path) -> None:
    path = tmp_path / "issue.odt"
    path.write_bytes(SAMPLE.read_bytes())
    with pytest.raises(IssueError, match=r"issue\.odt: unknown kind of issue file '\.odt'.*"
                                         r"\.docx \(Word\) or \.pdf"):
        parse_file(path)


def test_unreadable_and_undecodable_files_raise(tmp_path: Path) -> None:
    with pytest.raises(IssueError, match=r"missing\.txt: cannot read"):
        parse_file(tmp_path / "missing.txt")
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xff\xff\xff")
    with pytest.raises(IssueError, match=r"bad\.txt: neither UTF-8 nor GB18030"):
        parse_file(path)


def test_file_without_issue_line_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("随便写的笔记。\n", encoding="utf-8")
    with pytest.raises(IssueError, match=r"notes\.txt: no issue line"):
        parse_file(path)


def test_markdown_article_called_like_the_contents_round_trips() -> None:
    article = Article("【本期导读】", (Block(BlockKind.PARAGRAPH, (Span("正文。"),)),))
    issue = Issue(
        Masthead("", "协会", "简 报", 2020, 3, None, "协会编印", dt.date(2020, 3, 1)),
        (),
        (article,),
        EndBlock(),
    )
    assert parse_markdown(to_markdown(issue)).issue == issue


def test_markdown_full_width_indentation_is_stripped() -> None:
    md = f"+++\n{FRONT}+++\n\n## 文章\n\n\u3000\u3000从 Word 粘贴的段落。\n\n\u3000\n"
    blocks = parse_markdown(md).issue.articles[0].blocks
    assert blocks == (Block(BlockKind.PARAGRAPH, (Span("从 Word 粘贴的段落。"),)),)


def test_the_render_fixture_is_the_parsed_sample() -> None:
    """The hand-built Issue the render tests use is exactly what the parser makes."""
    from mailer.issue import parse_file

    from .sample_issue import sample_issue

    assert parse_file(SAMPLE).issue == sample_issue()


def test_the_sample_is_unedited() -> None:
    """The copy is byte for byte the issue staff have (PDF page breaks, mixed-width
    punctuation and all): its SHA-256 was taken from the original when it was copied.
    Tests that need other text make their own; they never edit this file."""
    digest = hashlib.sha256(SAMPLE.read_bytes()).hexdigest()
    assert digest == "00806084b7a8770f3cabc7b8b687b75000b58ffaea19be9c5bf367ffcf063fb5"


# --- text that becomes a header ------------------------------------------------------

EVIL = "Bcc:evil@attacker.example"
TITLE_LINE = 8  # "简 报" in the sample


def header_errors(result: ParseResult) -> list[tuple[int, str]]:
    return [(p.line, p.message) for p in result.errors]


@pytest.mark.parametrize("c", ["\r", "\x85", "\u2028", "\u2029", "\x00", "\t", "\x0b", "\x1b",
                               "\x7f", "\x9b"])
def test_a_control_character_in_a_text_title_is_an_error_at_its_line(c: str) -> None:
    text = SAMPLE.read_text(encoding="utf-8").replace("简 报", f"简 报{c}{EVIL}", 1)
    errors = header_errors(parse_text(text))
    assert [line for line, _ in errors] == [TITLE_LINE], errors
    assert "carriage return" in errors[0][1] if c == "\r" else f"U+{ord(c):04X}" in errors[0][1]


@pytest.mark.parametrize("where", ["organisation", "issue line"])
def test_a_control_character_in_other_subject_parts_is_an_error(where: str) -> None:
    text = SAMPLE.read_text(encoding="utf-8")
    if where == "organisation":
        text = text.replace("协会\n\n简 报", "协\u2028会\n\n简 报", 1)
        line = 6
    else:
        text = text.replace("2015 年第 9 期", "2015\u2028年第 9 期", 1)
        line = 10
    errors = header_errors(parse_text(text))
    assert [(n, where in m) for n, m in errors] == [(line, True)], errors


def test_a_bare_cr_in_a_crlf_file_is_an_error_and_in_the_body_a_warning() -> None:
    text = SAMPLE.read_text(encoding="utf-8").replace("\n", "\r\n")
    text = text.replace("简 报", f"{EVIL}\r简 报", 1)
    assert header_errors(parse_text(text))[0][0] == TITLE_LINE
    body = SAMPLE.read_text(encoding="utf-8").replace("作为新社会组织", "作为新\r社会组织", 1)
    result = parse_text(body)
    assert not result.errors
    assert any("carriage return" in p.message for p in result.warnings)


def test_cr_line_endings_for_the_whole_file_are_fine() -> None:
    result = parse_text(SAMPLE.read_text(encoding="utf-8").replace("\n", "\r"))
    assert not result.errors
    assert not any("carriage return" in p.message for p in result.warnings)
    assert result.issue == parse_file(SAMPLE).issue


MD_FRONT = (
    '+++\nnotice = ""\norganisation = "协会"\ntitle = "简 报"\nyear = 2020\n'
    'number = 1\npublisher = "协会编印"\ndate = 2020-01-01\n+++\n\n## 文章\n\n正文。\n'
)


@pytest.mark.parametrize("escape", ["\\r\\n", "\\r", "\\n", "\\u0085", "\\u2028", "\\u2029",
                                    "\\u0000", "\\t", "\\u001b", "\u2028", "\x85", "\t"])
@pytest.mark.parametrize(("key", "line"), [("title", 4), ("organisation", 3)])
def test_a_control_character_in_the_markdown_front_matter_is_an_error(
    escape: str, key: str, line: int
) -> None:
    value = "简 报" if key == "title" else "协会"
    md = MD_FRONT.replace(f'{key} = "{value}"', f'{key} = "{value}{escape}{EVIL}"')
    errors = header_errors(parse_markdown(md))
    assert [(n, key in m) for n, m in errors] == [(line, True)], errors


def test_a_multi_line_markdown_title_is_an_error() -> None:
    md = MD_FRONT.replace('title = "简 报"', f'title = """简 报\n{EVIL}"""')
    assert [n for n, _ in header_errors(parse_markdown(md))] == [4]


def test_a_bare_cr_in_the_markdown_front_matter_is_an_error() -> None:
    md = MD_FRONT.replace('notice = ""', 'notice = ""\r# stray')
    errors = header_errors(parse_markdown(md))
    assert [n for n, _ in errors] == [2], errors
    assert not parse_markdown(MD_FRONT.replace("\n", "\r")).errors


def test_the_sample_has_no_header_problems() -> None:
    assert not parse_file(SAMPLE).errors
    assert not parse_file(DATA / "handwritten.md").errors


# --- punctuation (GB/T 15834) ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fixed", "counts"),
    [
        ("落实党建工作责任制,发挥政治核心作用。", "落实党建工作责任制，发挥政治核心作用。",
         {",": 1}),
        ("党建工作:全覆盖、常态化;接地气?是的!", "党建工作：全覆盖、常态化；接地气？是的！",
         {":": 1, ";": 1, "?": 1, "!": 1}),
        ("他说:\"小创意发挥大作用\"。", "他说：“小创意发挥大作用”。", {":": 1, '"': 2}),
        ("\"两新\"组织与'党群聊吧'", "“两新”组织与‘党群聊吧’", {'"': 2, "'": 2}),
        ("是不是?", "是不是？", {"?": 1}),  # at the end of the line
        # Not between Chinese characters: left alone.
        ("上午9:00开会,地址:https://a.org/?b=1,2", "上午9:00开会，地址:https://a.org/?b=1,2",
         {",": 1}),
        ("Hello, world: don't \"stop\"", "Hello, world: don't \"stop\"", {}),
        ("共 106 家, 2015 年", "共 106 家, 2015 年", {}),
        ("已经是全角，：；？！“”", "已经是全角，：；？！“”", {}),
    ],
)
def test_fix_text(text: str, fixed: str, counts: dict[str, int]) -> None:
    assert fix_text(text) == (fixed, Counter(counts))


def test_punctuation_of_the_sample_is_found_by_line_and_never_changed(
    sample: ParseResult,
) -> None:
    found = check_source(SAMPLE.read_text(encoding="utf-8"))
    lines = SAMPLE.read_text(encoding="utf-8").split("\n")
    assert [f.line for f in found][:3] == [18, 19, 20]  # the contents entries
    assert str(found[2]) == ("line 20: half-width punctuation between Chinese characters: "
                             "':', ',' (GB/T 15834 writes ：，)")
    for f in found:
        assert sum(f.counts.values()) == sum(fix_text(lines[f.line - 1])[1].values()) > 0
    assert sample.problems == ()  # not a parse problem: the text is as staff wrote it
    assert "万向职院落实党建工作责任制,发挥政治核心作用。" in sample.issue.contents


def test_fix_issue_changes_only_the_marks(sample: ParseResult) -> None:
    fixed, n = fix_issue(sample.issue)
    assert n == sum(sum(f.counts.values())
                    for f in check_source(SAMPLE.read_text(encoding="utf-8")))
    assert fixed.contents[0] == "万向职院落实党建工作责任制，发挥政治核心作用。"
    assert fixed.articles[0].title == "万向职院落实党建工作责任制，发挥政治核心作用。"
    assert len(fixed.articles) == 5
    for a, b in zip(sample.issue.articles, fixed.articles, strict=True):
        for x, y in zip(a.blocks, b.blocks, strict=True):
            assert [(s.bold, s.href, len(s.text)) for s in x.spans] == [
                (s.bold, s.href, len(s.text)) for s in y.spans]
    assert fix_issue(fixed) == (fixed, 0)
    assert check_source(to_markdown(fixed), markdown=True) == []


def test_markdown_front_matter_quotes_are_not_punctuation() -> None:
    md = f'+++\n{FRONT}+++\n\n## 文章\n\n正文,"两新"。\n'
    [finding] = check_source(md, markdown=True)
    assert finding.line == 13 and finding.counts == Counter({",": 1, '"': 2})


def test_a_copies_line_alone_gives_its_count() -> None:
    """What another source builds (a Word table) carries only the line as written."""
    for written, n in (("（共印五十份）", 50), ("共印 60 份", 60), ("(共印120份)", 120)):
        assert EndBlock((EndLine("共印", written, kind=EndKind.COPIES),)).copies == n
