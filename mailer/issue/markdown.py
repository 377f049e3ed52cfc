"""Markdown with TOML front matter: read, and written for staff to edit."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence

from markdown_it.token import Token

from mailer.errors import IssueError
from mailer.models import (
    Article,
    Block,
    BlockKind,
    EndBlock,
    EndKind,
    EndLine,
    Issue,
    Span,
)

from .common import (
    _COPIES_RE,
    _END_RE,
    _ENTRY_MARK_RE,
    _MD,
    ParseResult,
    _Char,
    _check_contents,
    _checked_href,
    _end_block,
    _group,
    _join_breaks,
    _Problems,
    _q,
    check_header_text,
    check_lone_cr,
    is_end_line,
    split_names,
)
from .front import OVERRIDES, read_front

# --- Markdown -------------------------------------------------------------------

_CONTENTS_TITLES = {"本期导读", "本期要目", "本期目录", "目录"}


def _is_contents_title(text: str) -> bool:
    return re.sub(r"[\s【】\[\]]", "", text) in _CONTENTS_TITLES


def parse_markdown(text: str) -> ParseResult:
    """Parse Markdown with TOML front matter between ``+++`` lines (see ``to_markdown``).

    Raises ``IssueError`` if there is no front matter; what is wrong inside it is
    reported as problems at their lines (``front``).
    """
    rep = _Problems()
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not lines or lines[0].strip() != "+++":
        raise IssueError("no front matter: a Markdown issue starts with a '+++' line")
    close = next((i for i in range(1, len(lines)) if lines[i].strip() == "+++"), None)
    if close is None:
        raise IssueError("the front matter opened on line 1 has no closing '+++' line")
    front = read_front(lines[1:close], 2, rep)
    masthead, send_at, overrides, key_lines = (front.masthead, front.send_at, front.overrides,
                                               front.lines)
    check_lone_cr(rep, text.lstrip("\ufeff"), close + 1)
    for key, value in (("title", masthead.title), ("organisation", masthead.organisation)):
        check_header_text(rep, key_lines.get(key, 0), key, value)

    offset = close + 1  # body line 0 is file line offset + 1
    walker = _MarkdownBody(rep, offset)
    walker.walk(_MD.parse("\n".join(lines[close + 1 :])))
    end = walker.end
    for key, label in OVERRIDES.items():
        if key in overrides:
            new = EndLine(label, overrides[key], split_names(overrides[key]))
            old = [ln for ln in end.lines if ln.label != label]
            pos = next((i for i, ln in enumerate(end.lines) if ln.label == label), None)
            if pos is None:  # 报 first; 发 after the last line that names bodies
                named = [i for i, ln in enumerate(old) if ln.kind is EndKind.NAMES]
                pos = 0 if label == "报" or not named else named[-1] + 1
            end = EndBlock((*old[:pos], new, *old[pos:]), end.copies)

    if not walker.articles:
        rep.error(0, "no articles: each article starts with a '## ' heading")
    if walker.contents_line:
        _check_contents(walker.contents, walker.articles, rep)
    elif walker.articles:
        rep.warning(0, "no contents list (a '## 本期导读' heading followed by a list)")
    issue = Issue(
        masthead,
        tuple(e for _, e in walker.contents),
        tuple(walker.articles),
        end,
        send_at=send_at,
    )
    return ParseResult(issue, rep.sorted())


class _MarkdownBody:
    """Walks markdown-it's block tokens and collects contents, articles and end block."""

    def __init__(self, rep: _Problems, offset: int) -> None:
        self.rep = rep
        self.offset = offset
        self.contents: list[tuple[int, str]] = []
        self.contents_line = 0
        self.articles: list[Article] = []
        self.end = EndBlock()
        self._title: tuple[int, str] | None = None
        self._blocks: list[Block] = []
        self._in_contents = False
        self._item_prefix: list[str] = []
        self._warned: set[str] = set()

    def line(self, token: Token) -> int:
        return token.map[0] + self.offset + 1 if token.map else 0

    def walk(self, tokens: list[Token]) -> None:
        end_at = self._end_start(tokens)
        lists: list[str] = []
        for i, tok in enumerate(tokens[:end_at]):
            t = tok.type
            if t == "heading_open":
                self._heading(tok, tokens[i + 1])
            elif t == "paragraph_open":
                self._paragraph(tok, tokens[i + 1], lists)
            elif t in ("bullet_list_open", "ordered_list_open"):
                lists.append(t)
                if t == "bullet_list_open" and not self._in_contents:
                    self._once(tok, "bullet list items are kept as plain paragraphs")
            elif t in ("bullet_list_close", "ordered_list_close"):
                lists.pop()
            elif t == "list_item_open":
                ordered = lists[-1] == "ordered_list_open"
                self._item_prefix.append(f"{tok.info}{tok.markup} " if ordered else "")
            elif t == "list_item_close":
                self._item_prefix.pop()
            elif t in ("fence", "code_block"):
                self._once(tok, "code blocks are kept as plain paragraphs")
                chars: list[_Char] = [(c, False, None) for c in tok.content.strip()]
                self._add(BlockKind.PARAGRAPH, chars, tok)
            elif t == "blockquote_open":
                self._once(tok, "quote markers (>) are ignored")
            elif t == "hr":
                self._once(tok, "a '---' line is only used before the end block; ignored")
        self._finish_article()
        if end_at < len(tokens):
            self.end = self._end_block(tokens[end_at + 1 :])

    def _once(self, tok: Token, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.rep.warning(self.line(tok), message)

    def _heading(self, tok: Token, inline: Token) -> None:
        text = "".join(c for c, _, _ in _join_breaks(self._chars(inline, self.line(tok)))).strip()
        level = int(tok.tag[1])
        self._in_contents = False
        first = not (self.articles or self._title or self.contents_line)
        if level == 2 and first and _is_contents_title(text):
            self._finish_article()
            self._in_contents = True
            self.contents_line = self.line(tok)
        elif level == 2:
            self._finish_article()
            self._title = (self.line(tok), text)
        elif level == 1:
            self.rep.warning(
                self.line(tok), "'# ' headings are ignored (the masthead is in the front matter)"
            )
        else:
            if level > 4:
                self._once(tok, "'##### ' headings and deeper are kept as subsections")
            kind = BlockKind.SECTION if level == 3 else BlockKind.SUBSECTION
            self._add(kind, self._chars(inline, self.line(tok)), tok)

    def _paragraph(self, tok: Token, inline: Token, lists: list[str]) -> None:
        line = self.line(tok)
        chars = self._chars(inline, line)
        if self._in_contents:
            text = "".join(c for c, _, _ in chars)
            for k, entry in enumerate(text.split("\n")):
                ordered = bool(lists) and lists[-1] == "ordered_list_open" and k == 0
                mark = None if ordered else _ENTRY_MARK_RE.match(entry)
                entry = entry[mark.end() :] if mark else entry
                if entry.strip():
                    self.contents.append((line + k, entry.strip()))
            return
        prefix = self._item_prefix[-1] if self._item_prefix else ""
        if prefix:
            self._item_prefix[-1] = ""  # only the item's first paragraph carries its number
        chars = [(c, False, None) for c in prefix] + chars
        text = "".join(c for c, _, _ in chars)
        if _END_RE.match(text) or _COPIES_RE.fullmatch(text):
            self.rep.warning(
                line,
                f"{_q(text)} looks like an end-block line but is not after the final '---' "
                "line; kept as article text",
            )
        self._add(BlockKind.PARAGRAPH, chars, tok)

    def _add(self, kind: BlockKind, chars: list[_Char], tok: Token) -> None:
        chars = _join_breaks(chars)
        # Full-width spaces pasted from Word are indentation here too, as in plain text.
        while chars and chars[0][0].isspace():
            del chars[0]
        while chars and chars[-1][0].isspace():
            del chars[-1]
        if not chars:
            return
        if self._title is None:
            self.rep.error(
                self.line(tok),
                "text before the first article; start an article with a '## title' line",
            )
            return
        self._blocks.append(Block(kind, _group(chars), line=self.line(tok)))

    def _finish_article(self) -> None:
        if self._title is not None:
            line, title = self._title
            if not self._blocks:
                self.rep.warning(line, f"article {_q(title)} has no text")
            self.articles.append(Article(title, tuple(self._blocks), line=line))
        self._title, self._blocks = None, []

    def _chars(self, inline: Token, line: int) -> list[_Char]:
        """Characters of an inline token; unsafe links lose their href (with a warning)."""
        out: list[_Char] = []
        bold = 0
        link: tuple[str, int, int] | None = None  # the open link: href, first char, line
        for child in inline.children or []:
            t = child.type
            if t in ("text", "text_special", "code_inline", "html_inline"):
                out += [(c, bold > 0, None) for c in child.content]
            elif t in ("softbreak", "hardbreak"):
                out.append(("\n", bold > 0, None))
                line += 1
            elif t == "strong_open":
                bold += 1
            elif t == "strong_close":
                bold -= 1
            elif t in ("em_open", "em_close"):
                self._once(inline, "italic (*…*) is not used in a bulletin; kept as plain text")
            elif t == "link_open":  # links do not nest in Markdown
                link = (str(child.attrGet("href") or ""), len(out), line)
            elif t == "link_close" and link is not None:
                url, first, at = link
                label = "".join(c for c, _, _ in out[first:])
                href = _checked_href(url, label, at, self.rep)
                out[first:] = [(c, b, href) for c, b, _ in out[first:]]
                link = None
            elif t == "image":
                self.rep.warning(line, "images are not supported; only the alt text is kept")
                out += [(c, bold > 0, None) for c in child.content]
        return out

    def _end_start(self, tokens: list[Token]) -> int:
        """Index of the final top-level ``hr`` if only end-block paragraphs follow it."""
        last = max((i for i, t in enumerate(tokens) if t.type == "hr" and t.level == 0), default=-1)
        if last < 0:
            return len(tokens)
        for tok in tokens[last + 1 :]:
            if tok.type == "inline":
                first = tok.content.split("\n")[0]
                if not is_end_line(first):
                    return len(tokens)
            elif tok.type not in ("paragraph_open", "paragraph_close"):
                return len(tokens)
        return last

    def _end_block(self, tokens: list[Token]) -> EndBlock:
        rows: list[tuple[int, str]] = []
        for tok in tokens:
            if tok.type == "inline":
                line = self.line(tok)
                text = "".join(c for c, _, _ in self._chars(tok, line))
                rows += [(line + k, s.strip()) for k, s in enumerate(text.split("\n")) if s.strip()]
        return _end_block(rows, self.rep)


# --- writing Markdown -----------------------------------------------------------

_MD_ESCAPE = set("\\`*_[]<&!")


def _md_inline(text: str, *, heading: bool = False) -> str:
    out = "".join("\\" + c if c in _MD_ESCAPE or (heading and c == "#") else c for c in text)
    return out


def _md_block_start(text: str, *, numbered: bool = True) -> str:
    """Escape what would make a line start a heading, quote, list or rule.

    A numbered paragraph ``1. 创新……`` is written as it is: Markdown reads it as a list
    item, and ``parse_markdown`` puts the number back into the paragraph text.
    """
    if text[:1] in ("#", ">", "-", "+", "=", "~"):
        return "\\" + text
    if numbered and (m := re.match(r"\d{1,9}[.)] (?=\S)", text)):
        return m.group(0) + _md_block_start(text[m.end() :], numbered=False)
    m = re.match(r"\d{1,9}(?=[.)](?:[ \t]|$))", text)
    return text[: m.end()] + "\\" + text[m.end() :] if m else text


def _md_spans(spans: Sequence[Span], *, heading: bool = False) -> str:
    """Inline Markdown for spans; a bold run around links is one ``**…**``."""
    parts: list[str] = []
    for bold, run in itertools.groupby(spans, key=lambda sp: sp.bold):
        inner = ""
        for span in run:
            s = _md_inline(span.text, heading=heading)
            if span.href is not None:
                url = "".join("\\" + c if c in "\\()&<>" else c for c in span.href)
                s = f"[{s}]({url})"
            inner += s
        parts.append(f"**{inner}**" if bold else inner)
    return "".join(parts)


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def to_markdown(issue: Issue) -> str:
    """The Markdown form of an issue, for staff to edit: ``parse_markdown`` reads it
    back to an equal ``Issue``."""
    m = issue.masthead
    out = [
        "+++",
        f"notice = {_toml_str(m.notice)}",
        f"organisation = {_toml_str(m.organisation)}",
        f"title = {_toml_str(m.title)}",
        f"year = {m.year}",
        f"number = {m.number}",
    ]
    if m.total_number is not None:
        out.append(f"total_number = {m.total_number}")
    out.append(f"publisher = {_toml_str(m.publisher)}")
    if m.date is not None:
        out.append(f"date = {m.date.isoformat()}")
    if issue.send_at is not None:
        out.append(f"send_at = {issue.send_at.isoformat()}")
    else:
        out.append("# send_at = 2015-11-25 09:00  # when to send (optional, local time)")
    out += ["+++", ""]
    # Only the first '## ' heading can open the contents, so an article that happens
    # to be called 本期导读 needs a contents heading (maybe empty) in front of it.
    first_title = issue.articles[0].title if issue.articles else ""
    if issue.contents or _is_contents_title(first_title):
        out += ["## 本期导读", ""]
        out += [
            f"{n}. {_md_block_start(_md_inline(e), numbered=False)}"
            for n, e in enumerate(issue.contents, 1)
        ]
        out.append("")
    prefixes = {BlockKind.SECTION: "### ", BlockKind.SUBSECTION: "#### "}
    for article in issue.articles:
        out += [f"## {_md_inline(article.title, heading=True)}", ""]
        for block in article.blocks:
            if block.kind is BlockKind.IMAGE:
                continue  # see pictures_left_out: staff are told
            prefix = prefixes.get(block.kind)
            if prefix:
                out.append(prefix + _md_spans(block.spans, heading=True))
            else:
                out.append(_md_block_start(_md_spans(block.spans)))
            out.append("")
    if issue.end.lines:
        out += ["---", ""]
        out += [_md_block_start(_md_inline(ln.written)) + "\n" for ln in issue.end.lines]
    return "\n".join(out).rstrip("\n") + "\n"


def pictures_left_out(issue: Issue) -> list[str]:
    """A warning for each picture ``to_markdown`` leaves out: Markdown here is text
    only, so a picture from a Word issue would otherwise vanish without a word."""
    return [
        f"picture {block.image.name} is not in the Markdown file: the Markdown form "
        "cannot carry pictures; send the Word file itself to keep it in the email"
        for article in issue.articles for block in article.blocks
        if block.kind is BlockKind.IMAGE and block.image is not None
    ]
