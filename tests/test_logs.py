"""The one log format, line by line (the daemon's real output is checked in
test_daemon.py)."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import pytest

from mailer import logs

from .test_daemon import LOG_LINE


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """setup_logging() into a buffer; the logging state is put back afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    logs.setup_logging(stream=stream)
    yield stream
    logging.captureWarnings(False)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_event_fields_are_bare_or_quoted_on_one_line(out: io.StringIO) -> None:
    logs.event(logging.INFO, "started", 3, recipients=14, issue="简报 2015年第9期",
               error='a "b"\nc\\d\u2028e\x85', empty="", skipped=None)
    logs.event(logging.WARNING, "web.listening", url="http://127.0.0.1:8025")
    first, second = lines(out)
    assert first.endswith(
        'INFO campaign=3 event=started recipients=14 issue="简报 2015年第9期" '
        'error="a \\"b\\"\\nc\\\\d\\u2028e\\u0085" empty=""'
    )
    assert second.endswith("WARNING event=web.listening url=http://127.0.0.1:8025")
    assert all(LOG_LINE.fullmatch(line) for line in (first, second))


def test_other_loggers_become_event_log_lines(out: io.StringIO) -> None:
    logging.getLogger("apscheduler.scheduler").warning(
        'Run time of job "campaign-1" was missed by %s', "0:00:05")
    logging.getLogger("apscheduler.scheduler").info("Added job")  # below WARNING: dropped
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("mailer.send").info("two\nlines")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    got = lines(out)
    assert len(got) == 4
    assert got[0].endswith('WARNING event=log logger=apscheduler.scheduler '
                           'msg="Run time of job \\"campaign-1\\" was missed by 0:00:05"')
    assert got[1].endswith('INFO event=log logger=uvicorn.error '
                           'msg="Started server process [42]"')
    assert got[2].endswith('INFO event=log logger=mailer.send msg="two\\nlines"')
    assert "WARNING event=log logger=py.warnings msg=" in got[3] and "old API" in got[3]
    assert all(LOG_LINE.fullmatch(line) for line in got)


def test_a_traceback_follows_its_line_and_tokens_are_redacted_everywhere(
    out: io.StringIO,
) -> None:
    token = "v1.k1.YWJjOnNlbmQtdG8.QUJDREVGR0hJSktMTU5PUA"
    try:
        raise ValueError(f"bad /u/{token} here")
    except ValueError as e:
        logs.LOGGER.error(logs.fields("web.crashed", path=f"/u/{token}"), exc_info=e)
    text = out.getvalue()
    assert token not in text and "QUJDREVGR0hJSktMTU5PUA" not in text
    first, *trace = text.splitlines()
    assert LOG_LINE.fullmatch(first)
    assert first.endswith("ERROR event=web.crashed path=/u/[redacted]")
    assert trace[0] == "Traceback (most recent call last):"
    assert trace[-1] == "ValueError: bad /u/[redacted] here"


def test_access_lines_are_rewritten_at_the_source(out: io.StringIO) -> None:
    seen: list[str] = []

    class Other(logging.Handler):  # someone else's handler sees no token either
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    access = logging.getLogger("uvicorn.access")
    other = Other()
    access.addHandler(other)
    try:
        access.info('%s - "%s %s HTTP/%s" %d', "203.0.113.7:5123", "POST",
                    "/u/v1.k1.YWJj.QUJDREVGR0hJSktMTU5PUA?x=1", "1.1", 200)
        access.info('%s - "%s %s HTTP/%s" %d', "[::1]:80", "GET", "/healthz", "1.1", 200)
    finally:
        access.removeHandler(other)
    assert seen[0] == ("event=http method=POST path=/u/[redacted]?[redacted] status=200 "
                       "client=203.0.113.7 http=1.1")
    got = lines(out)
    assert got[0].endswith("INFO " + seen[0])
    assert got[1].endswith("INFO event=http method=GET path=/healthz status=200 client=::1 "
                           "http=1.1")


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/healthz", "/healthz"),
        ("/u/short", "/u/[redacted]"),
        ("/u/", "/u/"),
        ("/u/a/b", "/u/[redacted]"),
        ("/archive/0123456789abcdefXYZ/2015", "/archive/[redacted]/2015"),
        ("/healthz?token=abc", "/healthz?[redacted]"),
    ],
)
def test_redact_path(path: str, logged: str) -> None:
    assert logs.redact_path(path) == logged


def test_setup_twice_does_not_double_lines(out: io.StringIO) -> None:
    logs.setup_logging(stream=out)
    logs.event(logging.INFO, "once")
    assert len(lines(out)) == 1
