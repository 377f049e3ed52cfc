"""The PDF edition: the printed 简报 typeset once per issue with WeasyPrint.

The fonts are Debian's Noto CJK (``fonts-noto-cjk``), subset into the file by
WeasyPrint, so the PDF shows the same glyphs wherever it is opened and stays small.
Nothing is fetched: the HTML is ours, and every URL it could name is refused.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import MailerError

if TYPE_CHECKING:
    from .models import EndBlock, Issue
    from .render import Audience


class PdfUnavailable(MailerError):
    """WeasyPrint or the system libraries it needs are missing."""


class PdfFailed(MailerError):
    """WeasyPrint could not typeset the issue (or its process died doing it)."""


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
    # Imported here: the typesetting child imports this module, and rendering
    # (premailer, cssutils) would add a third of a second to its start for nothing.
    from .render import render_print

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


class Typesetting:
    """``typeset(html)`` running in a child process, so that the caller goes on with
    other work meanwhile (a campaign's delivery rows) on the other core, and the
    typesetter's memory (about 120 MB for an issue) is never the caller's.

    The child is a fresh interpreter running this module's ``_child_main`` with the
    caller's ``sys.path`` (so the same ``mailer`` and WeasyPrint), as multiprocessing's
    "spawn" would start it, but without importing the caller's main script again
    (which fails in any script that lacks an ``if __name__ == "__main__"`` guard).
    ``result`` waits for the PDF and raises what ``typeset`` would have raised;
    ``cancel`` ends a child whose PDF is no longer wanted. Raises ``PdfFailed`` when no
    process can be started."""

    def __init__(self, html: str) -> None:
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, *sys.path],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as e:
            raise PdfFailed(f"cannot start a process to typeset the PDF edition: {e}") from None
        typeset_runs.add()
        self._out: tuple[bytes, bytes] | None = None
        # communicate() feeds the HTML and reads the PDF together (no pipe can fill
        # up and stall either side); in a thread, so that the caller is free meanwhile.
        self._thread = threading.Thread(target=self._talk, args=(html.encode(),),
                                        name="mailer-typeset", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def _talk(self, html: bytes) -> None:
        with contextlib.suppress(OSError, ValueError):  # a cancelled child
            self._out = self._process.communicate(html)

    def result(self) -> bytes:
        """The PDF; waits for the child."""
        self._thread.join()
        out, err = self._out or (b"", b"")
        code = self._process.wait()
        why = err.decode(errors="replace").strip().splitlines()
        if code == _UNAVAILABLE and why:
            raise PdfUnavailable(why[-1])
        if code == _FAILED and why:
            raise PdfFailed(f"the PDF edition could not be typeset: {why[-1]}")
        if code != 0 or not out.startswith(b"%PDF-"):
            last = f": {why[-1]}" if why else ""
            raise PdfFailed("the PDF edition could not be typeset: its process stopped "
                            f"(exit code {code}){last}; try again")
        return out

    def cancel(self) -> None:
        """End the child if it is still typesetting (its PDF is not wanted)."""
        if self._process.poll() is None:
            self._process.kill()
        self._thread.join()
        self._process.wait()


_CHILD = "import sys; sys.path[:] = sys.argv[1:]; from mailer.pdf import _child_main; _child_main()"
_UNAVAILABLE, _FAILED = 3, 4  # the child's exit codes; the reason on its stderr


def _child_main() -> None:
    html = sys.stdin.buffer.read().decode()
    try:
        pdf = typeset(html)
    except PdfUnavailable as e:
        print(e, file=sys.stderr)
        sys.exit(_UNAVAILABLE)
    except Exception as e:  # WeasyPrint's own errors: told to the parent, in one line
        print(f"{type(e).__name__}: {e}".replace("\n", " "), file=sys.stderr)
        sys.exit(_FAILED)
    sys.stdout.buffer.write(pdf)
