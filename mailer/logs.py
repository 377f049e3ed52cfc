"""One log format for every line `mailer run` and `mailer serve` write to stderr.

Each line is one event, as journald wants it::

    2026-12-01 12:00:00 INFO campaign=3 event=started recipients=14 issue="2015 年第 9 期"
    2026-12-01 12:00:05 INFO event=http method=POST path=/u/[redacted] status=200 client=203.0.113.7
    2026-12-01 12:00:09 WARNING event=log logger=apscheduler.scheduler msg="Run time of …"

the local time, the level, then ``key=value`` fields: ``campaign=`` first when
the line is about one campaign, then always ``event=``. A value with a space, a
quote, ``=`` or a control character is double-quoted with backslash escapes, so
nothing but a traceback (appended below its line, as Python prints it) ever
spans two lines, and no ANSI colours are written.

Our own lines come from ``event()``. Lines from other libraries (uvicorn's
lifecycle lines on ``uvicorn.error``, APScheduler's warnings, Python warnings,
any ``logging`` call in the package that is not an ``event()``) become
``event=log logger=<name> msg="…"``; uvicorn's access lines become
``event=http``. Unsubscribe tokens are secrets: paths under ``/u/`` and anything
shaped like a token are replaced by ``[redacted]`` in every line, tracebacks
included, and the access-log filter rewrites uvicorn's records at the source, so a
handler someone else attaches never sees a token either.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import IO

LOGGER = logging.getLogger("mailer")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
REDACTED = "[redacted]"

# A line that is already ours: optional campaign=…, then event=….
_OURS = re.compile(r"(?:campaign=\S+ )?event=\S")
_BARE = re.compile(r'[^\s"=\\]+')
# Tokens (v1.<key id>.<payload>.<mac>, see tokens.py) wherever they appear, and any
# path under /u/, whatever follows it.
_TOKEN = re.compile(r"v\d+\.[A-Za-z0-9]{1,32}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}")
_U_PATH = re.compile(r"/u/[^\s\"'?#]+")
# A path segment this long is an identifier, not a route name: never log it.
_LONG_SEGMENT = 16


def quote(value: object) -> str:
    """A value as it appears after ``key=``: bare when it can be, else quoted."""
    text = str(value)
    if _BARE.fullmatch(text) and text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable() and ch != " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def fields(event_name: str, campaign: int | None = None, **values: object) -> str:
    """``[campaign=N ]event=NAME k=v …``; fields whose value is None are left out."""
    parts = [f"campaign={campaign}"] if campaign is not None else []
    parts.append(f"event={event_name}")
    parts += [f"{k}={quote(v)}" for k, v in values.items() if v is not None]
    return " ".join(parts)


def event(level: int, event_name: str, campaign: int | None = None, **values: object) -> None:
    """One log line: time, level, campaign (when there is one), event, then key=value
    details. (With a traceback: ``LOGGER.error(fields(...), exc_info=e)``.)"""
    LOGGER.log(level, "%s", fields(event_name, campaign, **values))


def redact(text: str) -> str:
    """``text`` with every unsubscribe token and every ``/u/…`` path replaced."""
    return _U_PATH.sub("/u/" + REDACTED, _TOKEN.sub(REDACTED, text))


def redact_path(path: str) -> str:
    """A request path fit for a log: no query string (its values are not ours to
    keep), no segment under ``/u/``, no segment long enough to be an identifier."""
    path, q, _ = path.partition("?")
    segments = path.split("/")
    for i, seg in enumerate(segments):
        if len(seg) >= _LONG_SEGMENT or (i > 1 and segments[1] == "u" and seg):
            segments[i] = REDACTED
    return redact("/".join(segments)) + ("?" + REDACTED if q else "")


class Formatter(logging.Formatter):
    """The one format: ``TIME LEVEL key=value…``, then a traceback if there is one."""

    def __init__(self) -> None:
        super().__init__(datefmt=TIME_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if _OURS.match(message):
            # Ours already; a stray line break (a value put in unquoted) stays escaped.
            line = message.replace("\r", "\\r").replace("\n", "\\n")
        else:
            line = fields("log", logger=record.name, msg=message.strip())
        out = f"{self.formatTime(record, self.datefmt)} {record.levelname} {redact(line)}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out += "\n" + redact(record.exc_text)
        if record.stack_info:
            out += "\n" + redact(self.formatStack(record.stack_info))
        return out


class _AccessLine(logging.Filter):
    """Rewrites uvicorn's access record (``'%s - "%s %s HTTP/%s" %d'`` with client,
    method, path, HTTP version, status) into ``event=http …`` with the path redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            client, method, path, version, status = args
            host = str(client).rsplit(":", 1)[0] if client else "-"
            record.msg = fields("http", method=method, path=redact_path(str(path)),
                                status=status, client=host.strip("[]"), http=version)
            record.args = ()
        else:  # not the shape we know: keep nothing of it that could hold a token
            record.msg = redact(record.getMessage())
            record.args = ()
        return True


_ACCESS_FILTER = _AccessLine()


def redact_access_log() -> None:
    """Install the access-line filter on ``uvicorn.access`` (once)."""
    logger = logging.getLogger("uvicorn.access")
    if _ACCESS_FILTER not in logger.filters:
        logger.addFilter(_ACCESS_FILTER)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so a second setup_logging() replaces it instead of doubling lines."""


def setup_logging(level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """Every line of the process to stderr in the one format: ours, uvicorn's,
    APScheduler's and Python's warnings."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(h)
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(Formatter())
    root.addHandler(handler)
    root.setLevel(level)
    # APScheduler narrates every job at INFO; our own lines say what matters.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # uvicorn's own handlers (colours, its formats) must not write: only the root's.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    redact_access_log()
    logging.captureWarnings(True)


__all__ = ["LOGGER", "Formatter", "event", "fields", "quote", "redact", "redact_access_log",
           "redact_path", "setup_logging"]
