"""Parse an issue source (plain bulletin text or Markdown) into an ``Issue``.

Every source gives the same ``Issue``: the plain text staff take out of the printed
PDF (``samples/bulletin-2015-09.txt``), Markdown with TOML front matter, which is
what ``to_markdown`` writes for staff to edit, and staff's own Word (.docx) and PDF
files, which ``word`` and ``pdf`` read into that plain text (``extracted``).
Parsing never raises on odd input: it returns the ``Issue`` together with
``Problem``s (errors stop a send, warnings are shown). Only input with no masthead
at all raises ``IssueError``.

The package is split by source format: ``text`` (plain text), ``markdown``
(Markdown, and writing it), ``common`` (what both share), ``word`` and ``pdf``
(reading those files), ``extracted`` (their text, parsed as plain text).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from pathlib import Path

from mailer.charset import decode
from mailer.errors import InvalidInput, IssueError
from mailer.links import is_safe_href

from .common import ParseResult, Problem, split_names
from .extracted import Extracted, as_text, parse_extracted
from .markdown import parse_markdown, pictures_left_out, to_markdown
from .punctuation import Finding, check_source, fix_issue
from .text import parse_text

__all__ = [
    "SUFFIXES",
    "Finding",
    "ParseResult",
    "Problem",
    "check_punctuation",
    "fix_issue",
    "is_safe_href",
    "parse_file",
    "parse_markdown",
    "parse_text",
    "pictures_left_out",
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
# Staff's own files: read into the plain text that ``parse_text`` parses, by the
# module's ``read``. Imported only for such a file: python-docx and pdfplumber take a
# quarter of a second to import, which a command on a .txt issue need not pay.
_READERS: dict[str, str] = {
    ".docx": "word",
    ".pdf": "pdf",
}
SUFFIXES = (*_PARSERS, *_READERS)
"""Every kind of issue file, by suffix: what the watched folder picks up too."""

_OLD_WORD = {".doc", ".wps", ".rtf"}


def parse_file(path: Path) -> ParseResult:
    """Parse ``path`` by its suffix: .txt plain text, .md Markdown, .docx Word, .pdf the
    printed edition.

    Text bytes are UTF-8 (a BOM is fine), else GB18030 as Chinese Windows saves them,
    or UTF-16 with a BOM (see ``mailer.charset``). A Word or PDF file's problems name a
    paragraph or a page instead of a line.
    Raises ``IssueError`` naming the file if it cannot be read, decoded or parsed.
    """
    try:
        if path.suffix.lower() in _READERS:
            return parse_extracted(_extract(path))
        return _parser(path)(read_source(path))
    except IssueError as e:
        message = str(e)
        raise IssueError(message if message.startswith(str(path)) or
                         message.startswith(path.name) else f"{path}: {message}") from e


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _OLD_WORD:
        raise IssueError(
            f"{path}: Word can open this {suffix} file but mailer cannot; open it in Word "
            "and choose File > Save As > Word Document (*.docx)"
        )
    if suffix not in _PARSERS and suffix not in _READERS:
        raise IssueError(
            f"{path}: unknown kind of issue file {path.suffix or '(no suffix)'!r}; use .txt "
            "(plain bulletin text), .md (Markdown with TOML front matter), .docx (Word) "
            "or .pdf (the printed edition)"
        )
    return suffix


def _parser(path: Path) -> Callable[[str], ParseResult]:
    parser = _PARSERS.get(_kind(path))
    if parser is None:
        raise IssueError(f"{path}: a {path.suffix} file has no plain text of its own")
    return parser


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise IssueError(f"{path}: cannot read the file ({e.strerror or e})") from e


def _extract(path: Path) -> Extracted:
    return _extracted(_READERS[_kind(path)], _read(path), path.name)


@functools.lru_cache(maxsize=4)
def _extracted(module: str, data: bytes, name: str) -> Extracted:
    """A Word or PDF file read, kept for its very bytes: reading one costs up to a
    second (a PDF's layout), and the same file is read again by the next step of
    the same work (``prepare`` then the campaign it starts, the watched folder then
    its schedule, each staff command of a test). What it returns is immutable."""
    reader: Callable[[bytes, str], Extracted] = importlib.import_module(
        f"{__name__}.{module}").read
    return reader(data, name)


def read_source(path: Path) -> str:
    """The text of a .txt or .md issue file, decoded (see ``parse_file``)."""
    _parser(path)
    try:
        text, _ = decode(_read(path), str(path),
                         hint="save the issue as UTF-8 text (.txt or .md)")
    except InvalidInput as e:
        raise IssueError(str(e)) from None
    return text


def check_punctuation(path: Path) -> list[Finding]:
    """Half-width marks between Chinese characters in an issue file, by line (in a
    Word or PDF file, by paragraph or page)."""
    if _kind(path) in _READERS:
        extracted = _extract(path)
        found = check_source(as_text(extracted))
        return [dataclasses.replace(f, where=extracted.lines[f.line - 1].where)
                if 0 < f.line <= len(extracted.lines) else f for f in found]
    markdown = _parser(path) is parse_markdown  # its TOML front matter is skipped
    return check_source(read_source(path), markdown=markdown)
