"""The PDF edition: the printed 简报 typeset once per issue with WeasyPrint.

The fonts are Debian's Noto CJK (``fonts-noto-cjk``), subset into the file by
WeasyPrint, so the PDF shows the same glyphs wherever it is opened and stays small.
Nothing is fetched: the HTML is ours, and every URL it could name is refused.
"""

from __future__ import annotations

import threading
from typing import Any, NoReturn

from .errors import MailerError
from .models import EndBlock, Issue
from .render import Audience, render_print


class PdfUnavailable(MailerError):
    """WeasyPrint or the system libraries it needs are missing."""


def _no_fetch(url: str, *args: Any, **kwargs: Any) -> NoReturn:
    raise ValueError(f"the PDF edition fetches nothing ({url})")


class _Runs:
    """How many times WeasyPrint has typeset a PDF in this process: it costs seconds
    per issue, so callers render once per issue and a test can hold them to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self) -> None:
        with self._lock:
            self._count += 1

    @property
    def count(self) -> int:
        return self._count


typeset_runs = _Runs()


def render_pdf(issue: Issue, audience: Audience, *, end: EndBlock | None = None) -> bytes:
    """The issue as an A4 PDF, fonts subset and embedded."""
    return typeset(render_print(issue, audience, end=end))


def typeset(html: str) -> bytes:
    """The print HTML of ``render.render_print`` as a PDF (the one WeasyPrint call)."""
    try:
        import weasyprint
    except (ImportError, OSError) as e:  # OSError: pango and friends not installed
        raise PdfUnavailable(
            f"cannot make PDFs: {e}; install WeasyPrint and its Debian libraries "
            "(`make system-deps`)") from None
    typeset_runs.add()
    document = weasyprint.HTML(string=html, url_fetcher=_no_fetch)
    pdf: bytes = document.write_pdf()
    return pdf
