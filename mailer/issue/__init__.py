"""Parse an issue source (plain bulletin text or Markdown) into an ``Issue``.

Two sources give the same ``Issue``: the plain text staff take out of the printed
PDF (``samples/bulletin-2015-09.txt``) and Markdown with TOML front matter, which is
what ``to_markdown`` writes for staff to edit. Parsing never raises on odd input: it
returns the ``Issue`` together with ``Problem``s (errors stop a send, warnings are
shown). Only input with no masthead at all raises ``IssueError``.

The package is split by source format: ``text`` (plain text), ``markdown``
(Markdown, and writing it), ``common`` (what both share).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mailer.charset import decode
from mailer.errors import InvalidInput, IssueError
from mailer.links import is_safe_href

from .common import ParseResult, Problem, split_names
from .markdown import parse_markdown, to_markdown
from .punctuation import Finding, check_source, fix_issue
from .text import parse_text

__all__ = [
    "Finding",
    "ParseResult",
    "Problem",
    "check_punctuation",
    "fix_issue",
    "is_safe_href",
    "parse_file",
    "parse_markdown",
    "parse_text",
    "read_source",
    "split_names",
    "to_markdown",
]


# --- files ----------------------------------------------------------------------

_PARSERS: dict[str, Callable[[str], ParseResult]] = {
    ".txt": parse_text,
    ".md": parse_markdown,
    ".markdown": parse_markdown,
}


def parse_file(path: Path) -> ParseResult:
    """Parse ``path`` by its suffix (.txt plain text, .md Markdown).

    The bytes are UTF-8 (a BOM is fine), else GB18030 as Chinese Windows saves them,
    or UTF-16 with a BOM (see ``mailer.charset``).
    Raises ``IssueError`` naming the file if it cannot be read, decoded or parsed.
    """
    parser = _parser(path)
    text = read_source(path)
    try:
        return parser(text)
    except IssueError as e:
        raise IssueError(f"{path}: {e}") from e


def _parser(path: Path) -> Callable[[str], ParseResult]:
    parser = _PARSERS.get(path.suffix.lower())
    if parser is None:
        raise IssueError(
            f"{path}: unknown kind of issue file {path.suffix or '(no suffix)'!r}; use .txt "
            "(plain bulletin text) or .md (Markdown with TOML front matter)"
        )
    return parser


def read_source(path: Path) -> str:
    """The text of a .txt or .md issue file, decoded (see ``parse_file``)."""
    _parser(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IssueError(f"{path}: cannot read the file ({e.strerror or e})") from e
    try:
        text, _ = decode(data, str(path), hint="save the issue as UTF-8 text (.txt or .md)")
    except InvalidInput as e:
        raise IssueError(str(e)) from None
    return text


def check_punctuation(path: Path) -> list[Finding]:
    """Half-width marks between Chinese characters in an issue file, by line."""
    markdown = _parser(path) is parse_markdown  # its TOML front matter is skipped
    return check_source(read_source(path), markdown=markdown)
