"""render: the sample issue as an inline-styled HTML email and a plain-text part."""

from __future__ import annotations

import dataclasses
import re
from html.parser import HTMLParser

import pytest

from mailer.links import is_safe_href
from mailer.models import (
    Article,
    Block,
    BlockKind,
    EndBlock,
    EndKind,
    EndLine,
    Issue,
    Role,
    Span,
)
from mailer.render import (
    HTML_LINE_LIMIT,
    UNSUBSCRIBE_PLACEHOLDER,
    Audience,
    Rendered,
    display_width,
    fill,
    fold_lines,
    inline_css,
    render_issue,
)

from .sample_issue import sample_issue

CONTACT = "协会秘书处 0571-00000000 secretariat@example.org"
SEND_TO = Audience(
    role=Role.SEND_TO,
    list_title="简报发送名单",
    footer_label="发",
    allow_unsubscribe=True,
    contact=CONTACT,
)
REPORT_TO = Audience(
    role=Role.REPORT_TO,
    list_title="简报报送名单",
    footer_label="报",
    allow_unsubscribe=False,
    contact=CONTACT,
)
CLOSING = "，。；：、）」”’！？,.;:!?)"


class Page(HTMLParser):
    """What a browser's parser sees: elements with their attributes, and the text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.styles: list[str] = []
        self.comments: list[str] = []
        self._chunks: list[str] = []
        self._in_style = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)
        else:
            self._chunks.append(data)

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)

    @property
    def text(self) -> str:
        return "".join(self._chunks)

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.elements
            if t == tag and (cls is None or cls in a.get("class", "").split())
        ]


@pytest.fixture(scope="module")
def issue() -> Issue:
    return sample_issue()


@pytest.fixture(scope="module")
def send_to(issue: Issue) -> Rendered:
    return render_issue(issue, SEND_TO)


@pytest.fixture(scope="module")
def report_to(issue: Issue) -> Rendered:
    return render_issue(issue, REPORT_TO)


def with_paragraph(issue: Issue, *spans: Span) -> Issue:
    """The issue with one more paragraph at the end of its first article."""
    first = issue.articles[0]
    changed = dataclasses.replace(first, blocks=(*first.blocks, Block(BlockKind.PARAGRAPH, spans)))
    return dataclasses.replace(issue, articles=(changed, *issue.articles[1:]))


# --- the HTML part --------------------------------------------------------------------


def test_subject_is_the_issue_label(send_to: Rendered) -> None:
    assert send_to.subject == "简报 2015年第9期（总第33期）"


def test_html_holds_the_whole_bulletin(send_to: Rendered, issue: Issue) -> None:
    page = Page(send_to.html)
    text = page.text
    assert page.find("html")[0]["lang"] == "zh-CN"
    m = issue.masthead
    for field in ("内部刊物", "注意保存", m.organisation, m.title, m.publisher):
        assert field in text
    assert "2015 年第 9 期" in text and "总第 33 期" in text
    assert "2015 年 11 月 24 日" in text
    assert "【本期导读】" in text
    for entry in issue.contents:
        assert entry in text
    for article in issue.articles:
        assert article.title in text
        for block in article.blocks:
            assert block.text in text  # every heading and paragraph, whole
    headings = [h for _, h in page.elements if h.get("class") == "sec"]
    assert len(headings) == sum(a.section_count for a in issue.articles) == 10
    for line in issue.end.lines:
        assert f"{line.label}：" in text
        for name in line.names:
            assert name in text
    assert page.find("title") and send_to.subject in send_to.html


def test_bold_spans_are_strong(send_to: Rendered) -> None:
    assert "<strong>三是</strong>加强党委中心组理论学习" in send_to.html


def test_styles_are_inlined_and_media_rules_survive(send_to: Rendered) -> None:
    page = Page(send_to.html)
    paragraphs = page.find("p", "p")
    assert len(paragraphs) == 25
    for p in paragraphs:
        style = p["style"].replace(" ", "")
        assert "text-indent:2em" in style and "line-height:1.8" in style
        assert "Microsoft YaHei" in p["style"] and "text-align:justify" in style
    (title,) = page.find("td", "title")
    assert "color:#d40000" in title["style"].replace(" ", "")
    assert "serif" in title["style"]
    (rule,) = page.find("td", "rule")
    assert "solid #d40000" in rule["style"]

    css = "\n".join(page.styles)
    assert "@media (prefers-color-scheme: dark)" in css
    assert "@media (max-width: 480px)" in css
    assert "!important" in css  # media rules must beat the inline styles
    assert not re.search(r"^\s*\.p\s*\{", css, re.M), "plain rules should be inlined, not kept"
    meta = {a.get("name"): a.get("content") for a in page.find("meta")}
    assert meta["color-scheme"] == "light dark"
    assert meta["viewport"].startswith("width=device-width")


def test_outlook_gets_a_fixed_width_wrapper(send_to: Rendered) -> None:
    comments = Page(send_to.html).comments
    assert any(c.startswith("[if mso]><table") and 'width="640"' in c for c in comments)
    assert any(c.startswith("[if mso]></td></tr></table>") for c in comments)
    (paper,) = Page(send_to.html).find("table", "paper")
    assert "max-width:640px" in paper["style"] and paper["width"] == "100%"


def test_preheader_is_hidden_and_previews_the_contents(send_to: Rendered, issue: Issue) -> None:
    hidden = [
        a
        for t, a in Page(send_to.html).elements
        if t == "div" and "display:none" in a.get("style", "")
    ]
    assert hidden
    body = send_to.html.split("<body", 1)[1]
    first_div = body.split("<div", 1)[1].split("</div>", 1)[0]
    assert issue.contents[0] in first_div


def preheader(html: str) -> str:
    body = html.split("<body", 1)[1]
    return body.split("<div", 1)[1].split(">", 1)[1].split("&#8199;", 1)[0].split("\u2007")[0]


def test_preheader_without_contents_uses_the_article_titles(issue: Issue) -> None:
    """An issue without 【本期导读】 got an inbox preview of just 本期导读：."""
    out = render_issue(dataclasses.replace(issue, contents=()), SEND_TO)
    shown = preheader(out.html)
    assert not shown.startswith("本期导读")
    assert shown.startswith(issue.articles[0].title + "　" + issue.articles[1].title)
    assert len(shown) <= 90 + len(issue.articles[-1].title)
    with_contents = preheader(render_issue(issue, SEND_TO).html)
    assert with_contents.startswith("本期导读：1、" + issue.contents[0])


def test_every_kind_of_end_line_in_both_parts(issue: Issue) -> None:
    end = EndBlock((
        EndLine("主送", "各会员单位", ("各会员单位",)),
        EndLine("报送", "省委组织部、市委组织部", ("省委组织部", "市委组织部")),
        EndLine("抄报", "省委“两新”工委", ("省委“两新”工委",)),
        EndLine("抄送", "各片组，张仲灿。", ("各片组", "张仲灿")),
        EndLine("印发", "协会秘书处", kind=EndKind.ISSUED, date="二〇一五年十一月二十四日"),
        EndLine("共印", "（共印五十份）", kind=EndKind.COPIES),
    ), copies=50)
    out = render_issue(dataclasses.replace(issue, end=end), SEND_TO)
    text = Page(out.html).text
    for written in ("主送：各会员单位", "报送：省委组织部、市委组织部", "抄报：省委“两新”工委",
                    "抄送：各片组，张仲灿。", "协会秘书处二〇一五年十一月二十四日印发",
                    "（共印五十份）"):
        assert written in text
    assert text.index("主送：") < text.index("报送：") < text.index("抄送：") < text.index(
        "印发") < text.index("共印")
    part = out.text.split("=" * 72 + "\n")[2].splitlines()
    assert part[:4] == ["主送：各会员单位", "报送：省委组织部、市委组织部", "抄报：省委“两新”工委",
                        "抄送：各片组，张仲灿。"]
    assert re.fullmatch("协会秘书处 +二〇一五年十一月二十四日印发", part[4])
    assert display_width(part[4]) == 72 and display_width(part[5]) == 72
    assert part[5].strip() == "（共印五十份）"


def test_unsubscribe_link_only_for_send_to(send_to: Rendered, report_to: Rendered) -> None:
    links = [a["href"] for a in Page(send_to.html).find("a")]
    assert UNSUBSCRIBE_PLACEHOLDER in links
    assert send_to.html.count(UNSUBSCRIBE_PLACEHOLDER) == 1
    assert "您收到此简报，是因为贵单位在本会简报发送名单（发）中。" in Page(send_to.html).text
    assert CONTACT in Page(send_to.html).text

    assert UNSUBSCRIBE_PLACEHOLDER not in report_to.html
    assert UNSUBSCRIBE_PLACEHOLDER not in report_to.text
    report_text = Page(report_to.html).text
    assert "如需变更接收地址，请联系协会秘书处" in report_text
    assert CONTACT in report_text
    assert "（报）" in report_text


def test_report_to_never_offers_unsubscribe(issue: Issue) -> None:
    """Report-to bodies are official recipients; a list misconfigured to allow
    unsubscribing still gets the contact line, not a link."""
    odd = dataclasses.replace(REPORT_TO, allow_unsubscribe=True)
    assert UNSUBSCRIBE_PLACEHOLDER not in render_issue(issue, odd).html


def test_send_to_list_without_unsubscribe_gets_the_contact(issue: Issue) -> None:
    closed = dataclasses.replace(SEND_TO, allow_unsubscribe=False)
    out = render_issue(issue, closed)
    assert UNSUBSCRIBE_PLACEHOLDER not in out.html + out.text
    assert "如需变更接收地址" in Page(out.html).text


def test_placeholder_is_plain_ascii_that_nothing_rewrites() -> None:
    assert UNSUBSCRIBE_PLACEHOLDER.isascii()
    assert re.fullmatch(r"https://[A-Za-z0-9./_-]+", UNSUBSCRIBE_PLACEHOLDER)
    doc = f'<html><body><a href="{UNSUBSCRIBE_PLACEHOLDER}">x</a></body></html>'
    assert UNSUBSCRIBE_PLACEHOLDER in inline_css(doc)


def test_end_block_from_the_caller_replaces_the_issues(issue: Issue) -> None:
    end = EndBlock(
        lines=(
            EndLine("报", "", ("市委组织部", "市委“两新”工委")),
            EndLine("发", "各会员单位", ("各会员单位",)),
        ),
        copies=120,
    )
    out = render_issue(issue, SEND_TO, end=end)
    text = Page(out.html).text
    assert "市委组织部、市委“两新”工委" in text  # names joined when no text is given
    assert "各会员单位" in text and "共印 120 份" in text
    assert "张仲灿" not in text
    assert "张仲灿" not in out.text and "共印 120 份" in out.text


def test_markup_in_content_is_escaped(issue: Issue) -> None:
    evil = with_paragraph(
        dataclasses.replace(issue, contents=("<img src=x onerror=alert(1)>", *issue.contents)),
        Span("<script>alert(1)</script>"),
        Span('"><b>粗</b>', bold=True),
    )
    evil = dataclasses.replace(
        evil, articles=(Article("<script>t()</script>标题", ()), *evil.articles)
    )
    out = render_issue(evil, SEND_TO)
    page = Page(out.html)
    tags = {t for t, _ in page.elements}
    assert "script" not in tags
    assert "img" not in tags
    assert not page.find("b")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out.html
    assert "<script>alert(1)</script>" in page.text  # shown to the reader as text
    assert "<script>alert(1)</script>" in out.text  # the text part is not HTML


@pytest.mark.parametrize(
    "href",
    [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        " javascript:alert(1)",
        "java\tscript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "http://example.org/",
        "vbscript:msgbox(1)",
        "https:///no-host",
        "//example.org/",
        # The renderer's own copy of the rule kept the first three (the parsers' did
        # not) and raised ValueError on the fourth; neither copy refused the rest.
        " https://example.org/",  # kept with the spaces stripped
        "https://example.org/ ",
        "https://:443/",  # a port and no host
        "https://[::1",
        "https://bank.example@evil.example/",
        "https://example.org/\u202egpj.exe",
        "mailto:javascript:alert(1)",
    ],
)
def test_unsafe_links_are_text_only(issue: Issue, href: str) -> None:
    out = render_issue(with_paragraph(issue, Span("点这里", href=href)), SEND_TO)
    page = Page(out.html)
    hrefs = [a.get("href", "") for a in page.find("a")]
    assert hrefs == [UNSUBSCRIBE_PLACEHOLDER]
    assert "点这里" in page.text
    assert href.strip() not in out.text
    assert not is_safe_href(href)


@pytest.mark.parametrize(
    "href", ["https://www.example.org/a?b=1&c=2", "mailto:secretariat@example.org"]
)
def test_https_and_mailto_links_are_kept(issue: Issue, href: str) -> None:
    out = render_issue(with_paragraph(issue, Span("协会网站", href=href)), SEND_TO)
    hrefs = [a.get("href", "") for a in Page(out.html).find("a")]
    assert href in hrefs
    assert href in out.text


def test_sample_html_stays_under_the_clipping_budget(send_to: Rendered) -> None:
    size = len(send_to.html.encode("utf-8"))
    assert size < 90 * 1024, f"{size / 1024:.1f} KB: Gmail clips messages near 102 KB"


def test_inline_css_keeps_classes_and_important() -> None:
    doc = (
        "<html><head><style>.x{color:red!important;margin:0}"
        "@media (max-width:480px){.x{color:blue}}</style></head>"
        '<body><p class="x">字</p></body></html>'
    )
    out = inline_css(doc)
    page = Page(out)
    (p,) = page.find("p", "x")
    assert "color:red !important" in p["style"]
    assert "color: blue !important" in "".join(page.styles)


# --- the text part --------------------------------------------------------------------


def test_text_mirrors_the_bulletin(send_to: Rendered, issue: Issue) -> None:
    text = send_to.text
    # undo wrapping and indents; a break at a space drops the space
    joined = re.sub(r"\n(?:    |   |　　)?", "", text).replace(" ", "")
    for field in ("内部刊物", issue.masthead.organisation, issue.masthead.title, "总第 33 期"):
        assert field in text
    for entry in issue.contents:
        assert entry.replace(" ", "") in joined
    for article in issue.articles:
        assert article.title.replace(" ", "") in joined
        for block in article.blocks:
            assert block.text.replace(" ", "") in joined
    assert "\n报：省委组织部" in text and "\n发：协会会员" in text
    for name in issue.end.lines[0].names:
        assert name in joined
    assert f"\n{UNSUBSCRIBE_PLACEHOLDER}\n" in text
    assert "您收到此简报" in text


def test_text_for_report_to_has_contact_not_link(report_to: Rendered) -> None:
    assert "如需变更接收地址，请联系协会秘书处" in report_to.text
    assert CONTACT in report_to.text


def test_text_lines_fit_and_never_start_with_closing_punctuation(
    send_to: Rendered, report_to: Rendered
) -> None:
    for text in (send_to.text, report_to.text):
        for line in text.splitlines():
            assert display_width(line) <= 76, line
            assert not line.lstrip(" 　")[:1] or line.lstrip(" 　")[0] not in CLOSING, line
            assert line == line.rstrip()
        assert "\n\n\n" not in text


def test_fill_breaks_cjk_but_not_words_or_before_closing_punctuation() -> None:
    text = "汉字" * 30 + "，。CDMP100A、200A 和 https://example.org/very/long/path 结束。"
    for width in range(20, 80, 3):
        lines = fill(text, width=width)
        assert "".join(lines).replace(" ", "") == text.replace(" ", "")
        for line in lines:
            # only a single word longer than the line may overflow it
            assert display_width(line) <= width or " " not in line
            assert line[0] not in CLOSING
            assert line[-1] not in "（「“"
        # an ASCII word is never cut in two
        assert any("CDMP100A、" in ln for ln in lines)
        assert any("https://example.org/very/long/path" in ln for ln in lines)


def test_fill_hanging_indent_and_overlong_word() -> None:
    lines = fill("甲" * 40, "报：", "    ", width=20)
    assert lines[0].startswith("报：甲") and all(ln.startswith("    甲") for ln in lines[1:])
    assert all(display_width(ln) <= 20 for ln in lines)
    long_word = "x" * 30
    assert fill(f"前 {long_word} 后", width=10) == ["前", long_word, "后"]


def test_display_width_counts_east_asian_width() -> None:
    assert display_width("abc") == 3
    assert display_width("简报") == 4
    assert display_width("，") == 2
    assert display_width("“") == 2  # ambiguous: drawn full width by CJK fonts


def test_html_lines_fit_an_8bit_smtp_body(send_to: Rendered) -> None:
    longest = max(len(line.encode("utf-8")) for line in send_to.html.split("\n"))
    assert longest <= HTML_LINE_LIMIT < 998


def test_fold_lines_breaks_only_inside_tags() -> None:
    text = "字" * 1000
    line = '<p class="p">' + "".join(
        f"<span>{text[i : i + 100]}</span>" for i in range(0, 1000, 100)
    )
    folded = fold_lines(line + "</p>", limit=400)
    assert folded.replace("\n>", ">") == line + "</p>"
    assert all(len(ln.encode()) <= 400 for ln in folded.split("\n"))
    assert Page(folded).text == text


def test_long_paragraphs_are_written_as_runs_between_ideographs(send_to: Rendered) -> None:
    longest = max((b for a in sample_issue().articles for b in a.blocks), key=lambda b: len(b.text))
    assert len(longest.text) > 500
    page = Page(send_to.html)
    assert longest.text in page.text
    assert "</span><span>" in send_to.html
