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

from collections.abc import Callable
from pathlib import Path

from mailer.charset import decode
from mailer.errors import InvalidInput, IssueError
from mailer.links import is_safe_href

from .common import ParseResult, Problem, split_names
from .extracted import Extracted, parse_extracted
from .markdown import parse_markdown, to_markdown
from .pdf import read_pdf
from .text import parse_text
from .word import read_word

__all__ = [
    "SUFFIXES",
    "ParseResult",
    "Problem",
    "is_safe_href",
    "parse_file",
    "parse_markdown",
    "parse_text",
    "split_names",
    "to_markdown",
]


# --- files ----------------------------------------------------------------------

_PARSERS: dict[str, Callable[[str], ParseResult]] = {
    ".txt": parse_text,
    ".md": parse_markdown,
    ".markdown": parse_markdown,
}
# Staff's own files: read into the plain text that ``parse_text`` parses.
_READERS: dict[str, Callable[[bytes, str], Extracted]] = {
    ".docx": read_word,
    ".pdf": read_pdf,
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
    suffix = path.suffix.lower()
    if suffix in _OLD_WORD:
        raise IssueError(
            f"{path}: Word can open this {suffix} file but mailer cannot; open it in Word "
            "and choose File > Save As > Word Document (*.docx)"
        )
    parser = _PARSERS.get(suffix)
    reader = _READERS.get(suffix)
    if parser is None and reader is None:
        raise IssueError(
            f"{path}: unknown kind of issue file {path.suffix or '(no suffix)'!r}; use .txt "
            "(plain bulletin text), .md (Markdown with TOML front matter), .docx (Word) "
            "or .pdf (the printed edition)"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IssueError(f"{path}: cannot read the file ({e.strerror or e})") from e
    try:
        if reader is not None:
            return parse_extracted(reader(data, path.name))
        assert parser is not None
        try:
            text, _ = decode(data, str(path), hint="save the issue as UTF-8 text (.txt or .md)")
        except InvalidInput as e:
            raise IssueError(str(e)) from None
        return parser(text)
    except IssueError as e:
        message = str(e)
        raise IssueError(message if message.startswith(str(path)) or
                         message.startswith(path.name) else f"{path}: {message}") from e
